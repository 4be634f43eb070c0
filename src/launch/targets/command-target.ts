/**
 * The command target: the operator's own program takes the materialized
 * disks from here (uploads them to a cloud, starts them on a hypervisor,
 * runs its own checks). It is run without a shell, in its own process group,
 * with the environment of commandEnv(); its exit status is the outcome.
 */
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import { LifeboatError } from "../../base/index.js";
import { commandEnv } from "./command-env.js";
import { LineSink } from "./line-sink.js";
import { exited, stopGroup } from "./process-group.js";
import type { TargetOutcome, TargetRun } from "./types.js";

export interface CommandTargetOptions {
  /** An executable (absolute, or found on PATH); never run through a shell. */
  command: string;
  args?: string[];
  timeoutSeconds: number;
}

/** Bounds on what the command's output may put in the job's log (per stream). */
const MAX_LINE = 4096;
const MAX_TOTAL = 1 << 20;
const GRACE_MS = 5000;

export async function runCommandTarget(run: TargetRun, opts: CommandTargetOptions): Promise<TargetOutcome> {
  const base = { command: opts.command, args: opts.args ?? [] };
  if (run.signal.aborted)
    return { ok: false, message: "the launch was cancelled before the command started", details: base };
  await fs.mkdir(run.workDir, { recursive: true });
  const started = performance.now();
  const child = spawn(opts.command, opts.args ?? [], {
    cwd: run.workDir,
    env: commandEnv(run),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
  const spawned = new Promise<void>((resolve) => child.once("spawn", resolve));
  const failed = await Promise.race([spawnError, spawned.then(() => null)]);
  if (failed) throw notRunnable(opts.command, failed);

  const sinks = (["stdout", "stderr"] as const).map((name) => {
    const sink = new LineSink({
      maxLineBytes: MAX_LINE,
      maxTotalBytes: MAX_TOTAL,
      keepLast: 5,
      onLine: (line) => run.log(name === "stdout" ? "info" : "warn", `command ${name}: ${line}`),
      onLimit: () =>
        run.log("warn", `command ${name}: more than ${MAX_TOTAL} bytes, further lines not logged`),
    });
    child[name].on("data", (d: Buffer) => sink.push(d));
    return sink;
  });
  run.log("info", `command started: ${[opts.command, ...(opts.args ?? [])].join(" ")} (pid ${child.pid})`);

  let stopReason: "timeout" | "aborted" | null = null;
  const stop = (why: "timeout" | "aborted") => {
    if (stopReason) return;
    stopReason = why;
    run.log(
      "warn",
      `command ${why === "timeout" ? `timed out after ${opts.timeoutSeconds} s` : "cancelled"}: stopping it`,
    );
    void stopGroup(child, GRACE_MS);
  };
  const timer = setTimeout(() => stop("timeout"), opts.timeoutSeconds * 1000);
  const onAbort = () => stop("aborted");
  run.signal.addEventListener("abort", onAbort, { once: true });
  try {
    await exited(child);
    await streamsClosed(child, closed);
  } finally {
    clearTimeout(timer);
    run.signal.removeEventListener("abort", onAbort);
  }
  for (const s of sinks) s.end();
  const details = {
    ...base,
    exitCode: child.exitCode,
    signal: child.signalCode,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    timedOut: stopReason === "timeout",
    aborted: stopReason === "aborted",
  };
  return {
    ok: stopReason === null && child.exitCode === 0,
    message: describe(opts, details, sinks[1]!.lastLines()),
    details,
  };
}

/** Output still buffered when the process exited is read; a grandchild holding the pipes open is not waited for long. */
async function streamsClosed(child: ReturnType<typeof spawn>, closed: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
  clearTimeout(timer);
  child.stdout?.destroy();
  child.stderr?.destroy();
}

function describe(
  opts: CommandTargetOptions,
  d: { exitCode: number | null; signal: string | null; seconds: number; timedOut: boolean; aborted: boolean },
  stderrTail: string[],
): string {
  const name = opts.command;
  const tail = stderrTail.length ? `; last error output: ${stderrTail[stderrTail.length - 1]}` : "";
  if (d.timedOut) return `${name} did not finish within ${opts.timeoutSeconds} s and was stopped`;
  if (d.aborted) return `the launch was cancelled; ${name} was stopped`;
  if (d.signal) return `${name} was killed by ${d.signal} after ${d.seconds} s${tail}`;
  if (d.exitCode === 0) return `${name} succeeded in ${d.seconds} s`;
  return `${name} failed with exit status ${d.exitCode} after ${d.seconds} s${tail}`;
}

function notRunnable(command: string, err: Error): LifeboatError {
  const code = (err as NodeJS.ErrnoException).code;
  return new LifeboatError(
    "LAUNCH_COMMAND_NOT_RUNNABLE",
    `the launch command ${command} cannot be run (${code ?? err.message})`,
    {
      hint: "give an executable file (chmod +x, with a #! line for a script) by its absolute path or a name on PATH; it is not run through a shell",
      cause: err,
    },
  );
}
