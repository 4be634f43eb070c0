/**
 * One disk as the replication engine holds it (replication.ts): its reader,
 * its two dirty sets, the writes in flight and its trace tracker, and what
 * pass it owes. Opened when the engine starts, and later for a disk added
 * while it runs (disk-changes.ts).
 */
import type { Clock, Logger } from "../base/index.js";
import type { AgentDisk, AgentSettings } from "./config.js";
import { DirtySet } from "./dirty-set.js";
import { InFlight } from "./in-flight.js";
import { DiskReader } from "../store/disk-reader.js";
import { type TraceLoss, TraceTracker } from "./trace.js";

/** A pass whose frames are all sent, up to `seq`. */
export interface SentPass {
  kind: "initial" | "rescan";
  seq: number;
}

export interface DiskRun {
  cfg: AgentDisk;
  reader: DiskReader;
  size: number;
  fresh: DirtySet;
  settled: DirtySet;
  /** Writes queued and not yet completed (trace mode). */
  inFlight: InFlight;
  tracker: TraceTracker | undefined;
  /** A pass over the whole disk is owed: "initial" when the replica has nothing of it. */
  owed: "initial" | "rescan" | undefined;
  /** Another rescan was asked for while one ran. */
  rescanAgain: boolean;
  pass: { kind: "initial" | "rescan"; done: number; started: number } | undefined;
  /** The last pass once all of it is sent: its kind and the sequence number of its last frame. */
  sentPass: SentPass | undefined;
  /** An image file's size and mtime when a scan-mode pass started. */
  imageStamp?: string;
}

export interface OpenDiskContext {
  blockSize: number;
  settings: AgentSettings;
  clock: Clock;
  log: Logger;
  /** Trace events of the disk were lost: it owes a rescan. */
  onLost(run: DiskRun, loss: TraceLoss): void;
  /** The tracker marked writes in `fresh`. */
  onWrites?(): void;
}

/**
 * Opens a disk's reader and, unless the settings say scan or the disk is an
 * image file, its trace tracker (a tracker that cannot start is an error
 * only with `tracker: "trace"`; otherwise the disk is tracked by rescans).
 * The disk owes a rescan until the caller says otherwise.
 */
export async function openDiskRun(cfg: AgentDisk, ctx: OpenDiskContext): Promise<DiskRun> {
  const { settings, clock, log } = ctx;
  const reader = await DiskReader.open(cfg.path, { logger: log });
  const size = reader.size;
  const set = () => new DirtySet({ diskSize: size, blockSize: ctx.blockSize });
  const run: DiskRun = {
    cfg,
    reader,
    size,
    fresh: set(),
    settled: set(),
    inFlight: new InFlight(),
    tracker: undefined,
    owed: "rescan",
    rescanAgain: false,
    pass: undefined,
    sentPass: undefined,
  };
  if (settings.tracker === "scan" || !reader.isBlockDevice) return run;
  try {
    run.tracker = await TraceTracker.start({
      device: cfg.path,
      ...(settings.traceBufferKb !== undefined ? { bufferSizeKb: settings.traceBufferKb } : {}),
      onRanges: (ranges) => {
        const at = clock.now();
        for (const r of ranges) {
          run.fresh.addSectors(r.sector, r.sectors, at);
          run.inFlight.queued(r.sector, r.sectors, at);
        }
        ctx.onWrites?.();
      },
      onCompleted: (ranges) => {
        const at = clock.now();
        for (const r of ranges) run.inFlight.completed(r.sector, r.sectors, at);
      },
      onLost: (loss) => ctx.onLost(run, loss),
      logger: log,
      clock,
    });
  } catch (err) {
    if (settings.tracker === "trace") {
      await reader.close();
      throw err;
    }
    log.warn({ disk: cfg.path, err: String(err) }, "block trace unavailable; tracking by rescans");
  }
  return run;
}

/** Stops a disk's tracker and closes its reader; errors are ignored (the disk may be gone). */
export async function closeDiskRun(run: DiskRun): Promise<void> {
  await Promise.allSettled([run.tracker?.stop() ?? Promise.resolve()]);
  await Promise.allSettled([run.reader.close()]);
}
