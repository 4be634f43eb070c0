/**
 * Filesystem freezes for consistency points: find the filesystems mounted
 * from a disk, freeze them, run the caller's read, thaw — always, and within
 * a hard cap on the time they stay frozen.
 *
 * A frozen filesystem blocks every writer, the agent included: an agent that
 * writes to a filesystem it froze (a log line, a state file) hangs itself and
 * the server. So nothing on this path writes to a file: log records are held
 * in memory and written after the thaw, and `fsfreeze` runs with piped
 * output. Thawing is guaranteed by `finally`, by a timer at the cap, and by
 * handlers for process exit and SIGINT, SIGTERM and SIGHUP while frozen
 * (SIGKILL cannot be caught: the operator thaws by hand, `fsfreeze -u`).
 *
 * Freezing spawns util-linux's `fsfreeze` (the FIFREEZE ioctl needs a native
 * call Node does not offer).
 */
import { execFile, spawnSync } from "node:child_process";
import { promises as fs } from "node:fs";
import { promisify } from "node:util";
import { LifeboatError, silentLogger, systemClock, type Clock, type Logger } from "../base/index.js";
import { deviceNumbers, sysfsDir } from "./block-device.js";

const run = promisify(execFile);

/** A filesystem mounted from a disk or one of its partitions. */
export interface MountedFilesystem {
  mountPoint: string;
  fsType: string;
  /** The mount source as mountinfo gives it (e.g. /dev/sdb1). */
  source: string;
  /** "major:minor" of the device the filesystem is on. */
  dev: string;
}

/** Decodes mountinfo's octal escapes (\040 for a space, ...). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** "major:minor" of a disk and of each of its partitions, from sysfs. */
export async function diskAndPartitionDevs(device: string): Promise<string[]> {
  let st;
  try {
    st = await fs.stat(device);
  } catch (err) {
    throw new LifeboatError("DISK_UNREADABLE", `cannot read disk ${device}: ${(err as Error).message}`, {
      hint: "check the path",
      cause: err,
    });
  }
  if (!st.isBlockDevice())
    throw new LifeboatError("DISK_UNREADABLE", `${device} is not a block device`, {
      hint: "filesystems are found on block devices; an image file has none mounted",
    });
  const { major, minor } = deviceNumbers(st.rdev);
  const devs = [`${major}:${minor}`];
  const dir = sysfsDir(major, minor);
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const dev = await fs.readFile(`${dir}/${name}/dev`, "utf8").catch(() => null);
    const isPartition = await fs
      .access(`${dir}/${name}/partition`)
      .then(() => true)
      .catch(() => false);
    if (dev && isPartition) devs.push(dev.trim());
  }
  return devs;
}

/**
 * The writable filesystems mounted from `device` or its partitions, one
 * entry per filesystem (bind mounts of the same one are listed once, by the
 * mount of its root when there is one). Read-only ones are left out: they
 * cannot change, so there is nothing to freeze.
 */
export async function mountedFilesystems(device: string, mountinfo?: string): Promise<MountedFilesystem[]> {
  const devs = new Set(await diskAndPartitionDevs(device));
  const text = mountinfo ?? (await fs.readFile("/proc/self/mountinfo", "utf8"));
  const byDev = new Map<string, MountedFilesystem & { root: string }>();
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const sep = f.indexOf("-", 6);
    if (sep < 0 || f.length < sep + 4) continue;
    const dev = f[2]!;
    if (!devs.has(dev)) continue;
    const superOpts = f[sep + 3]!.split(",");
    const mountOpts = f[5]!.split(",");
    if (superOpts.includes("ro") || mountOpts.includes("ro")) continue;
    const entry = {
      mountPoint: unescape(f[4]!),
      fsType: f[sep + 1]!,
      source: unescape(f[sep + 2]!),
      dev,
      root: unescape(f[3]!),
    };
    const seen = byDev.get(dev);
    if (!seen || (seen.root !== "/" && entry.root === "/")) byDev.set(dev, entry);
  }
  return [...byDev.values()].map(({ root: _root, ...fsys }) => fsys);
}

export interface FreezeOptions {
  /** Longest time the filesystems may stay frozen (default 2000 ms). */
  capMs?: number;
  /** The fsfreeze program (default "fsfreeze" on PATH). */
  fsfreeze?: string;
  clock?: Clock;
  /** Written to only after the thaw. */
  logger?: Logger;
}

export interface FreezeResult<T> {
  /**
   * What `fn` returned. With `capHit`, part of its work ran after the thaw
   * (or, when it gave up by throwing the signal's reason, undefined).
   */
  value: T | undefined;
  /** True when the cap was reached and the filesystems were thawed before `fn` finished. */
  capHit: boolean;
  /** How long the filesystems stayed frozen, in ms (from the first freeze to the last thaw). */
  frozenMs: number;
  frozen: MountedFilesystem[];
}

/**
 * Freezes `filesystems`, runs `fn`, thaws. If `fn` has not finished after
 * `capMs`, the filesystems are thawed at once, `fn`'s signal is aborted, and
 * (once `fn` settles) the result says `capHit`: the caller then records a
 * lower consistency level. `fn` must honour the signal promptly (throwing
 * `signal.reason` is the way to give up). An error
 * from `fn` is thrown after the thaw. A filesystem that fails to freeze
 * thaws those already frozen and throws `FREEZE_FAILED`; a thaw that fails
 * throws `FREEZE_THAW_FAILED` (after trying every filesystem).
 */
export async function withFrozen<T>(
  filesystems: MountedFilesystem[],
  fn: (signal: AbortSignal) => Promise<T>,
  opts: FreezeOptions = {},
): Promise<FreezeResult<T>> {
  const clock = opts.clock ?? systemClock;
  const prog = opts.fsfreeze ?? "fsfreeze";
  const capMs = opts.capMs ?? 2000;
  const held: string[] = []; // log lines held until the thaw
  const frozen: MountedFilesystem[] = [];
  const abort = new AbortController();
  let thawed = false;
  const thaw: { error: LifeboatError | null } = { error: null };
  let frozenMs = 0;
  const started = clock.now();

  const thawAllSync = () => {
    for (const f of frozen) spawnSync(prog, ["-u", f.mountPoint], { stdio: "ignore" });
  };
  const onExit = () => thawAllSync();
  const onSignal = (sig: NodeJS.Signals) => {
    thawAllSync();
    thawed = true;
    // Keep the signal's default meaning when nobody else listens for it.
    if (process.listenerCount(sig) === 1) {
      removeHandlers();
      process.kill(process.pid, sig);
    }
  };
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const removeHandlers = () => {
    process.removeListener("exit", onExit);
    for (const s of signals) process.removeListener(s, onSignal);
  };
  process.on("exit", onExit);
  for (const s of signals) process.on(s, onSignal);

  const thawAll = async () => {
    if (thawed) return;
    thawed = true;
    const failed: string[] = [];
    for (const f of [...frozen].reverse()) {
      try {
        await run(prog, ["-u", f.mountPoint]);
      } catch (err) {
        const msg = stderrOf(err);
        // "Invalid argument": not frozen (someone thawed it already). Anything else is serious.
        if (!/invalid argument/i.test(msg)) failed.push(`${f.mountPoint}: ${msg}`);
      }
    }
    frozenMs = clock.now() - started;
    if (failed.length)
      thaw.error = new LifeboatError("FREEZE_THAW_FAILED", `could not thaw ${failed.join("; ")}`, {
        hint: "writers on these filesystems are blocked: run `fsfreeze -u MOUNTPOINT` for each at once",
      });
  };

  try {
    for (const f of filesystems) {
      try {
        await run(prog, ["-f", f.mountPoint]);
        frozen.push(f);
      } catch (err) {
        throw new LifeboatError(
          "FREEZE_FAILED",
          `could not freeze ${f.mountPoint} (${f.fsType} on ${f.source}): ${stderrOf(err)}`,
          {
            hint: "the filesystem may not support freezing, or is frozen already (by another tool: `fsfreeze -u` it when that is done); the point is taken without a freeze at a lower consistency level",
            cause: err,
          },
        );
      }
    }
    held.push(`froze ${frozen.map((f) => f.mountPoint).join(", ") || "nothing"}`);

    let timer: NodeJS.Timeout | undefined;
    // A plain timer, not the injected clock: the thaw must happen in real time and the timer must be cancellable.
    const cap = new Promise<"cap">((resolve) => {
      timer = setTimeout(() => resolve("cap"), capMs);
    });
    const work = fn(abort.signal).then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );
    const first = await Promise.race([work, cap]);
    clearTimeout(timer);
    let capHit = false;
    if (first === "cap") {
      capHit = true;
      await thawAll();
      abort.abort(new LifeboatError("FREEZE_CAP_REACHED", `filesystems thawed after the ${capMs} ms cap`));
      held.push(`freeze cap of ${capMs} ms reached; thawed`);
    }
    const outcome = first === "cap" ? await work : first;
    await thawAll();
    if (thaw.error) throw thaw.error;
    if (!outcome.ok) {
      // fn giving up because the cap aborted it is the cap's outcome, not a failure.
      if (capHit && outcome.error === abort.signal.reason)
        return { value: undefined, capHit, frozenMs, frozen: [...frozen] };
      throw outcome.error;
    }
    return { value: outcome.value, capHit, frozenMs, frozen: [...frozen] };
  } finally {
    await thawAll();
    removeHandlers();
    const log = opts.logger ?? silentLogger;
    for (const line of held) log.info({ frozenMs }, line);
  }
}

function stderrOf(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message) ?? String(err);
}
