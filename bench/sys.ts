/**
 * Small process and system helpers shared by the benchmark scripts. Everything
 * here is synchronous on purpose: the benchmark runs one thing at a time, and
 * a blocking call keeps timings free of event-loop noise.
 */
import { spawnSync, type SpawnSyncOptions } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

/** Repository root (bench/ is compiled to dist/bench/, so go up two levels from there). */
export const ROOT = path.resolve(import.meta.dirname, "..", "..");
export const WORK = path.join(ROOT, "bench", "work");
export const RESULTS = path.join(ROOT, "bench", "results");

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Thrown when a child was killed by Ctrl-C or SIGTERM: stop the run, but let `finally` blocks clean up. */
export class Interrupted extends Error {
  constructor(what: string, signal: string) {
    super(`interrupted (${signal}) during ${what}`);
    this.name = "Interrupted";
  }
}

/**
 * Keeps this process alive on Ctrl-C so its `finally` blocks can unmount and
 * detach. Node runs JS signal handlers only between synchronous tasks, never
 * inside one, so the handler cannot stop work itself. Instead: Ctrl-C goes to
 * the whole foreground process group, every long piece of work is a child
 * process (including the image filling, see fill.ts), the child dies, and `run`
 * throws Interrupted. Plain `kill` of this process alone waits for the current
 * child; leftovers of a hard kill are cleaned up by the next run.
 */
export function trapInterrupts(): void {
  process.on("SIGINT", () => {
    process.exitCode = 130;
  });
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** A file descriptor to use as the child's stdin (e.g. an opened disk image). */
  stdinFd?: number;
  /** Let the child write straight to our stdout/stderr (long, chatty commands). */
  inherit?: boolean;
  /** Capture stdout but let the child's stderr (its progress log) through. */
  stderrInherit?: boolean;
  /** Return a failed result instead of throwing. */
  allowFail?: boolean;
  /** Cleanup (unmount, detach): never throws Interrupted, so the rest of the cleanup still runs. */
  cleanup?: boolean;
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (no shell) and returns its output; throws on non-zero exit unless allowFail. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const stdin = opts.stdinFd ?? "ignore";
  const spawnOpts: SpawnSyncOptions = {
    env: opts.env ?? process.env,
    cwd: opts.cwd ?? ROOT,
    stdio: [
      stdin,
      opts.inherit ? "inherit" : "pipe",
      opts.inherit || opts.stderrInherit ? "inherit" : "pipe",
    ],
    maxBuffer: 256 * MiB,
    encoding: "utf8",
  };
  const r = spawnSync(cmd, args, spawnOpts);
  // Killed by the signal, or exited 128+signal: /usr/bin/time ignores SIGINT and reports its child's death that way.
  const signal = r.signal ?? (r.status === 130 ? "SIGINT" : r.status === 143 ? "SIGTERM" : null);
  if ((signal === "SIGINT" || signal === "SIGTERM") && !opts.cleanup) {
    throw new Interrupted(`${cmd} ${args.slice(0, 3).join(" ")}`, signal);
  }
  const result: RunResult = {
    status: r.status ?? (r.signal ? 128 : 1),
    stdout: typeof r.stdout === "string" ? r.stdout : "",
    stderr: typeof r.stderr === "string" ? r.stderr : r.error ? String(r.error) : "",
  };
  if (result.status !== 0 && !opts.allowFail) {
    const tail = result.stderr.trim().split("\n").slice(-15).join("\n");
    throw new Error(
      `${cmd} ${args.join(" ")} failed (status ${result.status}${r.signal ? ", " + r.signal : ""})\n${tail}`,
    );
  }
  return result;
}

/** Like `run` but returns trimmed stdout. */
export function out(cmd: string, args: readonly string[], opts: RunOptions = {}): string {
  return run(cmd, args, opts).stdout.trim();
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

export function requireRoot(what: string): void {
  if (isRoot()) return;
  console.error(
    `${what} needs root: it attaches loop devices, runs mkfs.ext4 and mount, and drops the page cache.\n` +
      `Run it as root, e.g. \`sudo npm run bench\`.`,
  );
  process.exit(1);
}

/**
 * Flushes dirty pages and drops the page cache, dentries and inodes so every
 * timed command reads its input from disk, not from memory a previous tool
 * happened to leave warm.
 */
export function dropCaches(): void {
  run("sync", []);
  writeFileSync("/proc/sys/vm/drop_caches", "3\n");
}

/**
 * Where every timed step starts: `cold` drops the page cache (reads come from
 * the disk, as after a reboot); `warm` first reads the given files and trees
 * whole, so every tool reads its input from memory and the step measures
 * what the tool itself costs (CPU, threads, writes), not the disk.
 */
let cache: { mode: "cold" } | { mode: "warm"; paths: string[] } = { mode: "cold" };

export function setCacheMode(mode: "cold" | "warm", warmPaths: string[] = []): void {
  cache = mode === "cold" ? { mode } : { mode, paths: warmPaths };
}

export function cacheMode(): "cold" | "warm" {
  return cache.mode;
}

export function prepareCache(): void {
  if (cache.mode === "cold") {
    dropCaches();
    return;
  }
  run("sync", []);
  for (const p of cache.paths) {
    if (existsSync(p)) run("sh", ["-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", p]);
  }
}

/** Apparent and allocated size of a directory tree in bytes (`du -sb`, `du -sB1`). */
export function dirBytes(dir: string): number {
  if (!existsSync(dir)) return 0;
  const first = out("du", ["-sb", dir]).split(/\s+/)[0];
  return Number(first);
}

/** Bytes actually allocated on disk for a file (catches sparse files). */
export function allocatedBytes(file: string): number {
  return Number(out("du", ["-sB1", file]).split(/\s+/)[0]);
}

/** Mount points at or under `dir`, deepest first (so they can be unmounted in order). */
export function mountsUnder(dir: string): string[] {
  const abs = path.resolve(dir);
  return readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[1] ?? "")
    .map((p) => p.replace(/\\040/g, " "))
    .filter((p) => p === abs || p.startsWith(abs + "/"))
    .sort((a, b) => b.length - a.length);
}

/** Unmounts everything at or under `dir`; lazily if a plain unmount is refused. */
export function unmountAll(dir: string): void {
  for (const m of mountsUnder(dir)) {
    const opts = { allowFail: true, cleanup: true };
    if (run("umount", [m], opts).status !== 0) run("umount", ["-l", m], opts);
  }
}

/**
 * rm -rf that refuses to descend into a mounted filesystem: a crashed
 * debootstrap can leave /proc or /sys bound inside its target.
 */
export function removeTree(dir: string): void {
  unmountAll(dir);
  if (mountsUnder(dir).length > 0) throw new Error(`refusing to delete ${dir}: still has mounts under it`);
  rmSync(dir, { recursive: true, force: true });
}

/** Loop devices currently backed by `file` (left behind by an interrupted run). */
export function loopsFor(file: string): string[] {
  if (!existsSync(file)) return [];
  return out("losetup", ["-j", file], { cleanup: true })
    .split("\n")
    .map((l) => l.split(":")[0] ?? "")
    .filter((d) => d.startsWith("/dev/"));
}

export function detachLoops(file: string): void {
  for (const dev of loopsFor(file)) run("losetup", ["-d", dev], { allowFail: true, cleanup: true });
}

export function log(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  console.error(`[bench ${t}] ${msg}`);
}

/** Seconds since `start` (from performance.now()). */
export function since(start: number): number {
  return (performance.now() - start) / 1000;
}

export function fmtBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}
