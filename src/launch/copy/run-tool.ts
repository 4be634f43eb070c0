import { spawn } from "node:child_process";

export interface ToolResult {
  code: number | null;
  /** The last bytes of standard output and error together, for a log or an error message. */
  tail: string;
  timedOut: boolean;
  aborted: boolean;
}

/** A minimal environment for tools run on the copy: nothing of the caller's (no tokens, no proxies). */
export const TOOL_ENV: Readonly<Record<string, string>> = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  LC_ALL: "C",
  HOME: "/root",
};

const MAX_TAIL = 16 << 10;

/**
 * Runs a tool (losetup, mount, chroot ...) without a shell, keeping only the
 * tail of what it prints, killed after `timeoutMs` or when `signal` aborts.
 * Never throws: the caller decides what a failure means.
 */
export function runTool(
  cmd: string,
  args: string[],
  opts: { timeoutMs: number; signal?: AbortSignal | undefined },
): Promise<ToolResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...TOOL_ENV } });
    let tail = "";
    let timedOut = false;
    let aborted = false;
    const keep = (d: Buffer) => {
      tail += d.toString();
      if (tail.length > 2 * MAX_TAIL) tail = tail.slice(-MAX_TAIL);
    };
    const kill = () => child.kill("SIGKILL");
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, opts.timeoutMs);
    const onAbort = () => {
      aborted = true;
      kill();
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    const done = (code: number | null, extra = "") => {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      resolve({ code, tail: (tail + extra).slice(-MAX_TAIL).trim(), timedOut, aborted });
    };
    child.once("error", (err) => done(null, err.message));
    child.once("close", (code) => done(code));
  });
}
