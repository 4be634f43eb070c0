/**
 * tracefs plumbing for the trace tracker: finding (or mounting) tracefs, and
 * creating and removing the agent's private trace instances. An instance is a
 * directory under `instances/` with its own buffers and event switches, so
 * the agent neither sees nor disturbs anyone else's tracing.
 */
import { execFile } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { LifeboatError } from "../base/index.js";

const run = promisify(execFile);

const TRACEFS = "/sys/kernel/tracing";
const DEBUGFS = "/sys/kernel/debug";

/**
 * The tracing root: /sys/kernel/tracing, mounting tracefs there if it is not
 * mounted; else /sys/kernel/debug/tracing (older kernels, SLES 12 and RHEL 7),
 * mounting debugfs if needed. Throws `TRACE_UNAVAILABLE` when neither works.
 */
export async function tracingRoot(): Promise<string> {
  if (existsSync(`${TRACEFS}/instances`)) return TRACEFS;
  const problems: string[] = [];
  if (existsSync(TRACEFS)) {
    try {
      await run("mount", ["-t", "tracefs", "nodev", TRACEFS]);
      if (existsSync(`${TRACEFS}/instances`)) return TRACEFS;
    } catch (err) {
      problems.push(`mount tracefs on ${TRACEFS}: ${message(err)}`);
    }
  }
  const legacy = `${DEBUGFS}/tracing`;
  if (!existsSync(`${legacy}/instances`) && existsSync(DEBUGFS)) {
    try {
      await run("mount", ["-t", "debugfs", "nodev", DEBUGFS]);
    } catch (err) {
      problems.push(`mount debugfs on ${DEBUGFS}: ${message(err)}`);
    }
  }
  if (existsSync(`${legacy}/instances`)) return legacy;
  throw new LifeboatError(
    "TRACE_UNAVAILABLE",
    `kernel tracing is not available (${problems.join("; ") || "no tracefs or debugfs"})`,
    {
      hint: "the agent needs root and a kernel with tracefs (CONFIG_FTRACE, block tracepoints); without them it tracks changes by rescanning (scan mode)",
    },
  );
}

function message(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message) ?? String(err);
}

/**
 * Removes an instance directory: switches its events off first (cheap, and
 * stops it filling), then rmdir. Returns false when there was none. An
 * instance with a file open (another live process reading it) cannot be
 * removed: that is `TRACE_INSTANCE_BUSY`.
 */
export async function removeInstance(dir: string): Promise<boolean> {
  if (!existsSync(dir)) return false;
  await fs.writeFile(path.join(dir, "events", "enable"), "0").catch(() => undefined);
  await fs.writeFile(path.join(dir, "tracing_on"), "0").catch(() => undefined);
  try {
    await fs.rmdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return false;
    throw new LifeboatError(
      code === "EBUSY" ? "TRACE_INSTANCE_BUSY" : "TRACE_UNAVAILABLE",
      `cannot remove trace instance ${dir}: ${code ?? message(err)}`,
      {
        hint:
          code === "EBUSY"
            ? "another process has the instance open: is a second agent tracking this disk? Stop it, or remove the directory with rmdir once it has exited"
            : "check that the agent runs as root",
        cause: err,
      },
    );
  }
  return true;
}

/**
 * Writes a control file of an instance. When the kernel refuses the value
 * (EINVAL), the instance's `error_log` (or the root's, on kernels without one
 * per instance) is put in the error: it holds the parser's reason.
 */
export async function writeControl(
  root: string,
  instance: string,
  rel: string,
  value: string,
): Promise<void> {
  try {
    await fs.writeFile(path.join(instance, rel), value);
  } catch (err) {
    let log = "";
    for (const f of [path.join(instance, "error_log"), path.join(root, "error_log")]) {
      log = await fs.readFile(f, "utf8").catch(() => "");
      if (log.trim()) break;
    }
    throw new LifeboatError(
      rel.endsWith("filter") ? "TRACE_FILTER_REJECTED" : "TRACE_UNAVAILABLE",
      `the kernel refused ${JSON.stringify(value)} for ${rel} of trace instance ${instance}: ${(err as NodeJS.ErrnoException).code ?? message(err)}${log.trim() ? `\n${lastEntry(log)}` : ""}`,
      {
        hint: rel.endsWith("filter")
          ? "the kernel's block_bio_queue event differs from what the agent expects; report the kernel version (uname -r); the agent falls back to scan mode"
          : "check that the agent runs as root and the kernel has block trace events",
        cause: err,
      },
    );
  }
}

/** The last entry of an error_log (entries start with a bracketed time stamp). */
function lastEntry(log: string): string {
  const lines = log.trimEnd().split("\n");
  let start = lines.length - 1;
  while (start > 0 && !lines[start]!.startsWith("[")) start--;
  return lines.slice(start).join("\n");
}

/** Counters of one CPU's buffer that reveal loss: `overrun` (overwrite mode) and `dropped events`. */
export interface CpuLossCounters {
  overrun: number;
  dropped: number;
}

/**
 * Reads a CPU's `stats` file (a few hundred bytes) into `scratch`, a buffer
 * the caller reuses: the tracker reads every CPU's after each pass, and a
 * plain readFile of a file whose size says 0 makes a new 64 KiB buffer each
 * time (186 MiB in one replication benchmark run).
 */
export async function readCpuStats(file: string, scratch: Buffer): Promise<CpuLossCounters> {
  const fh = await fs.open(file, "r");
  try {
    const { bytesRead } = await fh.read(scratch, 0, scratch.length, 0);
    return parseCpuStats(scratch.toString("latin1", 0, bytesRead));
  } finally {
    await fh.close();
  }
}

export function parseCpuStats(text: string): CpuLossCounters {
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
  return { overrun: num(/^overrun:\s*(\d+)/m), dropped: num(/^dropped events:\s*(\d+)/m) };
}
