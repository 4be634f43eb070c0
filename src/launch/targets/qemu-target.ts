/**
 * The QEMU target: boots the materialized disks in a local virtual machine
 * and watches its serial console for a line that says the server is up (the
 * success pattern: a login prompt, a service's banner, a health script's
 * output). A drill proves the PIT boots; a recovery can keep the machine
 * running. Nothing leaves the machine unless user networking is asked for,
 * and then restricted to the host.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import { childPath, findExecutable } from "./executables.js";
import { LineSink } from "./line-sink.js";
import { stopGroup } from "./process-group.js";
import { chooseAccel } from "./qemu-accel.js";
import { qemuArgs } from "./qemu-args.js";
import { describeQemuOutcome } from "./qemu-outcome.js";
import { FileFollower } from "./serial-follower.js";
import type { TargetOutcome, TargetRun } from "./types.js";

export interface QemuTargetOptions {
  /** A regular expression (JavaScript syntax) matched against each serial console line. */
  successPattern: string;
  timeoutSeconds: number;
  memoryMiB?: number;
  cpus?: number;
  /** Direct kernel boot (with `initrd` and `append`); without it the firmware boots the first disk. */
  kernel?: string;
  initrd?: string;
  append?: string;
  network?: "none" | "user";
  accel?: "auto" | "kvm" | "tcg";
  /** Leave the machine running after success (its pid is in the details; stop it with stopQemu). */
  keepRunning?: boolean;
}

const POLL_MS = 200;
const GRACE_MS = 5000;

export async function runQemuTarget(run: TargetRun, opts: QemuTargetOptions): Promise<TargetOutcome> {
  const pattern = compilePattern(opts.successPattern);
  const qemu = await findExecutable("qemu-system-x86_64");
  if (qemu === null) throw qemuMissing();
  if (run.signal.aborted)
    return { ok: false, message: "the launch was cancelled before QEMU started", details: {} };
  await fs.mkdir(run.workDir, { recursive: true });
  const accel = await chooseAccel(opts.accel ?? "auto");
  const serialLog = path.join(run.workDir, "serial.log");
  const qemuLog = path.join(run.workDir, "qemu.log");
  const args = qemuArgs({
    accel,
    memoryMiB: opts.memoryMiB ?? 2048,
    cpus: opts.cpus ?? 2,
    disks: run.disks,
    serialLog,
    network: opts.network ?? "none",
    name: `lifeboat-${run.facts.server.name}`,
    ...(opts.kernel !== undefined && { kernel: opts.kernel }),
    ...(opts.initrd !== undefined && { initrd: opts.initrd }),
    ...(opts.append !== undefined && { append: opts.append }),
  });
  run.log("info", `starting ${qemu} ${args.join(" ")}`);
  const machine = await startQemu(qemu, args, qemuLog);
  const watch = await watchConsole(run, opts, pattern, machine, serialLog);
  const { child } = machine;
  const keep = watch.end === "matched" && opts.keepRunning === true && !machine.hasExited();
  if (keep) {
    child.unref();
    run.log("info", `QEMU keeps running as pid ${child.pid}`);
  } else {
    await stopGroup(child, GRACE_MS);
    await watch.follower.poll();
    watch.sink.end();
  }
  const details = {
    accel,
    bootSeconds: watch.bootSeconds,
    serialLog,
    qemuLog,
    matchedLine: watch.matched,
    running: keep,
    ...(keep && { pid: child.pid }),
    ...(watch.end === "exited" && { exitCode: child.exitCode, exitSignal: child.signalCode }),
  };
  const message = await describeQemuOutcome({
    end: watch.end,
    opts,
    accel,
    bootSeconds: watch.bootSeconds,
    matched: watch.matched,
    pid: keep ? child.pid : undefined,
    exitCode: child.exitCode,
    serialTail: watch.sink.lastLines(),
    qemuLog,
  });
  return { ok: watch.end === "matched", message, details };
}

interface RunningQemu {
  child: ChildProcess;
  /** performance.now() when it was started. */
  started: number;
  exit: Promise<void>;
  hasExited(): boolean;
}

/** Starts QEMU in a process group of its own, its messages going to `qemuLog`. */
async function startQemu(qemu: string, args: string[], qemuLog: string): Promise<RunningQemu> {
  const errFile = await fs.open(qemuLog, "w");
  const started = performance.now();
  const child = spawn(qemu, args, {
    stdio: ["ignore", "ignore", errFile.fd],
    detached: true,
    env: { PATH: childPath(), LC_ALL: "C" },
  });
  // Listened to at once: QEMU refusing its options exits within milliseconds.
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once("exit", () => {
      exited = true;
      resolve();
    }),
  );
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
  } catch (err) {
    throw qemuMissing(err);
  } finally {
    await errFile.close();
  }
  return { child, started, exit, hasExited: () => exited };
}

interface ConsoleWatch {
  end: "matched" | "exited" | "timeout" | "aborted";
  matched: string | null;
  bootSeconds: number | null;
  sink: LineSink;
  follower: FileFollower;
}

/**
 * Follows the serial console until a line matches, QEMU exits, the launch is
 * cancelled or the time is up. Every line goes to the job's log.
 */
async function watchConsole(
  run: TargetRun,
  opts: QemuTargetOptions,
  pattern: RegExp,
  machine: RunningQemu,
  serialLog: string,
): Promise<ConsoleWatch> {
  let matched: string | null = null;
  let bootSeconds: number | null = null;
  const see = (line: string) => {
    if (matched === null && pattern.test(line)) {
      matched = line;
      bootSeconds = Math.round((performance.now() - machine.started) / 100) / 10;
    }
  };
  const sink = new LineSink({
    maxLineBytes: 4096,
    maxTotalBytes: 4 << 20,
    keepLast: 10,
    onLine: (line) => {
      run.log("info", `serial: ${line}`);
      see(line);
    },
    onLimit: () =>
      run.log("warn", "serial console: more than 4 MiB, further lines not logged (all are in serial.log)"),
  });
  const follower = new FileFollower(serialLog, sink);
  const deadline = machine.started + opts.timeoutSeconds * 1000;
  const result = (end: ConsoleWatch["end"]): ConsoleWatch => ({ end, matched, bootSeconds, sink, follower });
  for (;;) {
    const exited = machine.hasExited();
    await follower.poll();
    if (exited) sink.end(); // QEMU is gone: what it wrote is all there is
    const pending = sink.pending();
    if (pending !== "") see(pending);
    if (matched !== null) return result("matched");
    if (exited) return result("exited");
    if (run.signal.aborted) return result("aborted");
    if (performance.now() >= deadline) return result("timeout");
    await Promise.race([machine.exit, delay(POLL_MS)]);
  }
}

function compilePattern(source: string): RegExp {
  try {
    if (source === "") throw new Error("empty");
    return new RegExp(source);
  } catch (err) {
    throw new LifeboatError(
      "LAUNCH_BAD_SUCCESS_PATTERN",
      `the success pattern "${source}" is empty or not a valid regular expression`,
      {
        hint: "give a JavaScript regular expression, such as 'login:' or 'web-1 ready'",
        cause: err,
        exitCode: 2,
      },
    );
  }
}

function qemuMissing(cause?: unknown): LifeboatError {
  return new LifeboatError("LAUNCH_QEMU_MISSING", "qemu-system-x86_64 cannot be run on this machine", {
    hint: "install QEMU (apt-get install qemu-system-x86 on Debian and Ubuntu, dnf install qemu-kvm on RHEL)",
    ...(cause !== undefined && { cause }),
  });
}

/** A pause between polls of the serial console (a real timer: the guest runs in real time). */
function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
