import { spawn } from "node:child_process";

export interface BoundedResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  /** True when standard output passed `maxStdout` and the process was killed. */
  overflow: boolean;
  timedOut: boolean;
}

/**
 * Runs a helper tool (debugfs, losetup, mount) with a cap on what it may print
 * and on how long it may take: a file in an untrusted image must not make us
 * buffer gigabytes or wait for ever. Never runs a shell.
 */
export function runBounded(
  cmd: string,
  args: string[],
  opts: { maxStdout: number; timeoutMs: number; env?: Record<string, string> },
): Promise<BoundedResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, LC_ALL: "C" },
    });
    const out: Buffer[] = [];
    let outLen = 0;
    let stderr = "";
    let overflow = false;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts.timeoutMs);
    child.stdout.on("data", (d: Buffer) => {
      if (overflow) return;
      outLen += d.length;
      if (outLen > opts.maxStdout) {
        overflow = true;
        child.kill("SIGKILL");
        return;
      }
      out.push(d);
    });
    child.stderr.on("data", (d: Buffer) => {
      if (stderr.length < 65536) stderr += d.toString();
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      resolve({ code: null, stdout: Buffer.alloc(0), stderr: err.message, overflow, timedOut });
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr, overflow, timedOut });
    });
  });
}
