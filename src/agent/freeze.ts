/**
 * Filesystem freezes for consistency points: freeze the filesystems of a
 * disk, run the caller's read, thaw — always, and within a hard cap on the
 * time they stay frozen.
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
 * call Node does not offer). Each filesystem is synced first, so that the
 * flush inside the freeze, and the time frozen, stay short.
 */
import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { LifeboatError, silentLogger, systemClock, type Clock, type Logger } from "../base/index.js";
import type { MountedFilesystem } from "./mounted-filesystems.js";

const run = promisify(execFile);

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

/** Freezes and thaws a set of filesystems, and thaws them if the process is interrupted meanwhile. */
class Freezer {
  readonly frozen: MountedFilesystem[] = [];
  /** True once thawed (by thawAll or by a signal). */
  thawed = false;
  /** True when a signal thawed the filesystems. */
  interrupted = false;
  private readonly signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

  constructor(private readonly prog: string) {
    process.on("exit", this.onExit);
    for (const s of this.signals) process.on(s, this.onSignal);
  }

  async freeze(f: MountedFilesystem): Promise<void> {
    await run("sync", ["-f", f.mountPoint]).catch(() => undefined);
    try {
      await run(this.prog, ["-f", f.mountPoint]);
      this.frozen.push(f);
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

  /** Thaws everything frozen, last first; returns what could not be thawed. */
  async thawAll(): Promise<string[]> {
    if (this.thawed) return [];
    this.thawed = true;
    const failed: string[] = [];
    for (const f of [...this.frozen].reverse()) {
      try {
        await run(this.prog, ["-u", f.mountPoint]);
      } catch (err) {
        const msg = stderrOf(err);
        // "Invalid argument": not frozen (someone thawed it already). Anything else is serious.
        if (!/invalid argument/i.test(msg)) failed.push(`${f.mountPoint}: ${msg}`);
      }
    }
    return failed;
  }

  /** Removes the process handlers; call once thawed. */
  release(): void {
    process.removeListener("exit", this.onExit);
    for (const s of this.signals) process.removeListener(s, this.onSignal);
  }

  private thawAllSync(): void {
    for (const f of this.frozen) spawnSync(this.prog, ["-u", f.mountPoint], { stdio: "ignore" });
    this.thawed = true;
  }

  private readonly onExit = () => {
    if (!this.thawed) this.thawAllSync();
  };

  private readonly onSignal = (sig: NodeJS.Signals) => {
    if (!this.thawed) this.thawAllSync();
    this.interrupted = true;
    // Keep the signal's default meaning when nobody else listens for it.
    if (process.listenerCount(sig) === 1) {
      this.release();
      process.kill(process.pid, sig);
    }
  };
}

/**
 * Freezes `filesystems`, runs `fn`, thaws. The cap counts from the first
 * freeze: if `fn` has not finished by then, the filesystems are thawed at
 * once, `fn`'s signal is aborted, and (once `fn` settles) the result says
 * `capHit`: the caller then records a lower consistency level. The same
 * holds when freezing alone outlasts the cap (`fn` is then not called), and
 * when a signal thawed the filesystems while the process carried on. `fn`
 * must honour the signal promptly (throwing `signal.reason` is the way to
 * give up). An error from `fn` is thrown after the thaw. A filesystem that
 * fails to freeze thaws those already frozen and throws `FREEZE_FAILED`; a
 * thaw that fails throws `FREEZE_THAW_FAILED` (after trying every
 * filesystem).
 */
export async function withFrozen<T>(
  filesystems: MountedFilesystem[],
  fn: (signal: AbortSignal) => Promise<T>,
  opts: FreezeOptions = {},
): Promise<FreezeResult<T>> {
  const clock = opts.clock ?? systemClock;
  const capMs = opts.capMs ?? 2000;
  const freezer = new Freezer(opts.fsfreeze ?? "fsfreeze");
  const abort = new AbortController();
  const capReason = new LifeboatError("FREEZE_CAP_REACHED", `filesystems thawed after the ${capMs} ms cap`);
  const held: string[] = []; // log lines, written after the thaw
  let started: number | null = null;
  let frozenMs = 0;
  let timer: NodeJS.Timeout | undefined;
  const thaw = async (): Promise<string[]> => {
    const failed = await freezer.thawAll();
    if (started !== null && frozenMs === 0) frozenMs = clock.now() - started;
    return failed;
  };
  // A plain timer, not the injected clock: the thaw must happen in real time, and the timer be cancellable.
  const cap = new Promise<"cap">((resolve) => {
    timer = setTimeout(() => {
      abort.abort(capReason);
      resolve("cap");
    }, capMs);
    timer.unref();
  });
  try {
    for (const f of filesystems) {
      if (abort.signal.aborted) break; // freezing alone took the whole cap
      started ??= clock.now();
      await freezer.freeze(f);
    }
    held.push(`froze ${freezer.frozen.map((f) => f.mountPoint).join(", ") || "nothing"}`);
    const work = abort.signal.aborted
      ? Promise.resolve({ ok: false as const, error: capReason })
      : fn(abort.signal).then(
          (value) => ({ ok: true as const, value }),
          (error: unknown) => ({ ok: false as const, error }),
        );
    const first = await Promise.race([work, cap]);
    const failed = await thaw(); // at the cap: straight away, while fn winds down
    if (first === "cap") held.push(`freeze cap of ${capMs} ms reached; thawed`);
    const outcome = first === "cap" ? await work : first;
    if (failed.length)
      throw new LifeboatError("FREEZE_THAW_FAILED", `could not thaw ${failed.join("; ")}`, {
        hint: "writers on these filesystems are blocked: run `fsfreeze -u MOUNTPOINT` for each at once",
      });
    const capHit =
      first === "cap" ||
      abort.signal.aborted ||
      freezer.interrupted ||
      freezer.frozen.length < filesystems.length;
    const result = { capHit, frozenMs, frozen: [...freezer.frozen] };
    if (outcome.ok) return { ...result, value: outcome.value };
    // fn giving up because the cap aborted it is the cap's outcome, not a failure.
    if (capHit && outcome.error === capReason) return { ...result, value: undefined };
    throw outcome.error;
  } finally {
    clearTimeout(timer);
    await thaw();
    freezer.release();
    const log = opts.logger ?? silentLogger;
    for (const line of held) log.info({ frozenMs }, line);
  }
}

function stderrOf(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message) ?? String(err);
}
