/**
 * The `trace` tracker: learns which sectors of a disk change from the
 * kernel's block_bio_queue trace event, with no kernel module.
 *
 * It works in a private trace instance (`instances/lifeboat-<major>-<minor>`)
 * whose only enabled event is block_bio_queue, filtered in the kernel on the
 * disk's dev_t and on writes, discards and write-zeroes (rwbs containing W, D
 * or N; a plain "W*" would miss journal commits such as FWFSM). It reads each
 * CPU's `trace_pipe_raw` non-blocking and decodes the binary pages with the
 * layout from the event's `format` file; after a read that comes back short
 * (the buffer is drained) it waits `pollIntervalMs` before reading again.
 *
 * Lost events are never silent: a rising `overrun` or `dropped events` count
 * in `per_cpu/cpuN/stats`, a page flagged as following lost events, a page
 * that does not decode, or a read error each call `onLost`; the caller must
 * then rescan the disk, as it must after an agent restart or a reboot (the
 * trace knows nothing of what happened while it was not running).
 *
 * Partitions: a bio submitted to a partition is remapped to whole-disk
 * sectors before block_bio_queue fires; its dev_t is the whole disk's on
 * older kernels and the partition's on recent ones (the remap no longer swaps
 * the bio's device). The filter therefore names the disk and each partition
 * it has at start, and every sector reported is a whole-disk sector.
 * Partitions created later are not tracked: restart the tracker (and rescan)
 * when the partition table changes. This follows the kernel's block-layer
 * source; the test machine's kernel reads no partition tables, so no test
 * covers a partitioned disk yet.
 *
 * A crashed agent's instance is found by its name and removed at the next
 * start.
 */
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError, silentLogger, systemClock, type Clock, type Logger } from "../base/index.js";
import { deviceNumbers, kernelDev, partitionNumbers } from "../store/block-device.js";
import { decodePage, parseBioQueueFormat, type BioQueueLayout } from "./trace-page.js";
import { readCpuStats, removeInstance, tracingRoot, writeControl, type CpuLossCounters } from "./tracefs.js";

export type TracedOp = "write" | "discard" | "write-zeroes";

/** A range of 512-byte sectors of the disk that a bio wrote, discarded or zeroed. */
export interface TracedRange {
  sector: number;
  sectors: number;
  op: TracedOp;
}

/** Why the tracker may have missed writes; after any of them the caller rescans. */
export interface TraceLoss {
  reason: "overrun" | "dropped" | "missed-page" | "malformed-page" | "read-error";
  cpu: number;
  /** How many events the counters say were lost (0 when unknown). */
  count: number;
  error?: unknown;
}

export interface TraceTrackerOptions {
  /** The block device to track (a whole disk, e.g. /dev/sdb). */
  device: string;
  /** Called with each batch of traced ranges, in the order the CPU buffers were read. */
  onRanges: (ranges: TracedRange[]) => void;
  /** Called whenever events may have been lost. */
  onLost: (loss: TraceLoss) => void;
  /**
   * When given, requests completing on the disk are traced too (the kernel's
   * block_rq_complete) and reported here: with the queued ranges they tell
   * which writes are still in flight (see InFlight).
   */
  onCompleted?: (ranges: { sector: number; sectors: number }[]) => void;
  /** Instance name; default `lifeboat-<major>-<minor>`. */
  instanceName?: string;
  /** Per-CPU buffer size in KiB; default the kernel's. */
  bufferSizeKb?: number;
  /** Wait after a short read; default 100 ms. */
  pollIntervalMs?: number;
  clock?: Clock;
  logger?: Logger;
}

interface CpuReader {
  cpu: number;
  handle: fs.FileHandle;
  statsPath: string;
  counters: CpuLossCounters;
}

/** Pages read from one CPU in one pass of the loop before it looks at the others again. */
const PAGES_PER_PASS = 64;

/** Room for a CPU's `stats` file (about 250 bytes). */
const STATS_BYTES = 4096;

export class TraceTracker {
  private stopping = false;
  private loopDone: Promise<void> = Promise.resolve();
  private chain: Promise<unknown> = Promise.resolve();
  private wake: (() => void) | null = null;
  private readonly page: Buffer;
  private readonly statsScratch = Buffer.alloc(STATS_BYTES);
  private counts = { events: 0, pages: 0, losses: 0 };

  private constructor(
    private readonly opts: TraceTrackerOptions,
    /** The instance directory under tracefs. */
    readonly instanceDir: string,
    readonly major: number,
    readonly minor: number,
    /** Kernel dev_t of the disk and its partitions. */
    private readonly devs: Set<number>,
    private readonly layouts: BioQueueLayout[],
    private readonly cpus: CpuReader[],
    pageSize: number,
  ) {
    this.page = Buffer.alloc(pageSize);
  }

  /**
   * Creates the instance (removing a stale one of the same name), sets the
   * filter, enables the event and starts reading. Throws `TRACE_UNAVAILABLE`,
   * `TRACE_NOT_BLOCK_DEVICE`, `TRACE_FILTER_REJECTED` or `TRACE_INSTANCE_BUSY`;
   * on failure nothing is left behind. Every bio queued after the returned
   * promise resolves reaches `onRanges`, or `onLost` is called.
   */
  static async start(opts: TraceTrackerOptions): Promise<TraceTracker> {
    const log = opts.logger ?? silentLogger;
    let st;
    try {
      st = await fs.stat(opts.device);
    } catch (err) {
      throw new LifeboatError(
        "DISK_UNREADABLE",
        `cannot read disk ${opts.device}: ${(err as Error).message}`,
        {
          hint: "check the path",
          cause: err,
        },
      );
    }
    if (!st.isBlockDevice())
      throw new LifeboatError("TRACE_NOT_BLOCK_DEVICE", `${opts.device} is not a block device`, {
        hint: "image files are tracked by rescanning (scan mode), not by the kernel's block trace",
      });
    const { major, minor } = deviceNumbers(st.rdev);
    const root = await tracingRoot();
    const dir = path.join(root, "instances", opts.instanceName ?? `lifeboat-${major}-${minor}`);
    if (await removeInstance(dir)) log.warn({ instance: dir }, "removed a stale trace instance");
    const cpus: CpuReader[] = [];
    try {
      await fs.mkdir(dir);
      if (opts.bufferSizeKb !== undefined)
        await writeControl(root, dir, "buffer_size_kb", String(opts.bufferSizeKb));
      const ev = "events/block/block_bio_queue";
      const layout = parseBioQueueFormat(await fs.readFile(path.join(dir, ev, "format"), "utf8"));
      const devs = [{ major, minor }, ...(await partitionNumbers(major, minor))];
      const devTest = devs.map((d) => `dev == ${kernelDev(d.major, d.minor)}`).join(" || ");
      const filter = `(${devTest}) && (rwbs ~ "*W*" || rwbs ~ "*D*" || rwbs ~ "*N*")`;
      await writeControl(root, dir, `${ev}/filter`, filter);
      const layouts = [layout];
      const done = "events/block/block_rq_complete";
      if (opts.onCompleted) {
        layouts.push(parseBioQueueFormat(await fs.readFile(path.join(dir, done, "format"), "utf8")));
        await writeControl(root, dir, `${done}/filter`, devTest);
      }
      const subbufKb = Number(
        (await fs.readFile(path.join(dir, "buffer_subbuf_size_kb"), "utf8").catch(() => "4")).trim(),
      );
      for (const name of (await fs.readdir(path.join(dir, "per_cpu"))).sort()) {
        const m = /^cpu(\d+)$/.exec(name);
        if (!m) continue;
        const cpuDir = path.join(dir, "per_cpu", name);
        const statsPath = path.join(cpuDir, "stats");
        const handle = await fs.open(
          path.join(cpuDir, "trace_pipe_raw"),
          constants.O_RDONLY | constants.O_NONBLOCK,
        );
        cpus.push({ cpu: Number(m[1]), handle, statsPath, counters: { overrun: 0, dropped: 0 } });
      }
      for (const c of cpus) c.counters = await readCpuStats(c.statsPath, Buffer.alloc(STATS_BYTES));
      await writeControl(root, dir, `${ev}/enable`, "1");
      if (opts.onCompleted) await writeControl(root, dir, `${done}/enable`, "1");
      await writeControl(root, dir, "tracing_on", "1");
      const pageSize = Number.isFinite(subbufKb) && subbufKb > 0 ? subbufKb * 1024 : 4096;
      const kdevs = new Set(devs.map((d) => kernelDev(d.major, d.minor)));
      const t = new TraceTracker(opts, dir, major, minor, kdevs, layouts, cpus, pageSize);
      t.loopDone = t.loop();
      log.info({ instance: dir, device: opts.device, filter }, "trace tracker started");
      return t;
    } catch (err) {
      await Promise.allSettled(cpus.map((c) => c.handle.close()));
      await removeInstance(dir).catch(() => undefined);
      if (err instanceof LifeboatError) throw err;
      throw new LifeboatError(
        "TRACE_UNAVAILABLE",
        `cannot set up trace instance ${dir}: ${(err as Error).message}`,
        {
          hint: "the kernel's block trace events differ from what the agent expects; report the kernel version (uname -r); the agent falls back to scan mode",
          cause: err,
        },
      );
    }
  }

  /** Counters since start: events delivered, pages read, loss signals raised. */
  stats(): { events: number; pages: number; losses: number } {
    return { ...this.counts };
  }

  /**
   * Reads every CPU buffer to its end now and delivers what it held: every
   * bio queued before the call is in an `onRanges` batch when this resolves.
   */
  drain(): Promise<void> {
    return this.serial(() => this.pass(Infinity)).then(() => undefined);
  }

  /** Delivers what is still buffered, closes the buffers and removes the instance. Idempotent. */
  async stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.wake?.();
    }
    await this.loopDone;
    try {
      await this.serial(() => this.pass(Infinity));
    } catch {
      // the instance goes away regardless
    }
    await Promise.allSettled(this.cpus.map((c) => c.handle.close()));
    this.cpus.length = 0;
    await removeInstance(this.instanceDir);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async loop(): Promise<void> {
    const interval = this.opts.pollIntervalMs ?? 100;
    const clock = this.opts.clock ?? systemClock;
    while (!this.stopping) {
      let busy = false;
      try {
        busy = await this.serial(() => this.pass(PAGES_PER_PASS));
      } catch (err) {
        this.lost({ reason: "read-error", cpu: -1, count: 0, error: err });
      }
      if (busy || this.stopping) continue;
      await Promise.race([clock.sleep(interval), new Promise<void>((r) => (this.wake = r))]);
      this.wake = null;
    }
  }

  /** One pass over the CPUs; true when some CPU still had more than `maxPages` pages. */
  private async pass(maxPages: number): Promise<boolean> {
    const batch: TracedRange[] = [];
    const completed: { sector: number; sectors: number }[] = [];
    const queueId = this.layouts[0]!.id;
    let busy = false;
    for (const c of this.cpus) {
      for (let n = 0; ; n++) {
        if (n >= maxPages) {
          busy = true;
          break;
        }
        let got: number;
        try {
          ({ bytesRead: got } = await c.handle.read(this.page, 0, this.page.length, null));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EAGAIN") break;
          throw err;
        }
        if (got === 0) break;
        this.counts.pages++;
        const res = decodePage(this.page.subarray(0, got), this.layouts, (e) => {
          if (e.event !== queueId) {
            if (e.sectors > 0 && this.devs.has(e.dev) && opOf(e.rwbs) !== null)
              completed.push({ sector: e.sector, sectors: e.sectors });
            return;
          }
          const op = opOf(e.rwbs);
          if (op === null || e.sectors === 0 || !this.devs.has(e.dev)) return;
          this.counts.events++;
          batch.push({ sector: e.sector, sectors: e.sectors, op });
        });
        if (res.missedEvents) this.lost({ reason: "missed-page", cpu: c.cpu, count: 0 });
        if (res.malformed) this.lost({ reason: "malformed-page", cpu: c.cpu, count: 0 });
        if (got < this.page.length) break;
      }
    }
    if (batch.length) this.opts.onRanges(batch);
    if (completed.length) this.opts.onCompleted?.(completed);
    await this.checkCounters();
    return busy;
  }

  private async checkCounters(): Promise<void> {
    for (const c of this.cpus) {
      const now = await readCpuStats(c.statsPath, this.statsScratch);
      if (now.overrun > c.counters.overrun)
        this.lost({ reason: "overrun", cpu: c.cpu, count: now.overrun - c.counters.overrun });
      if (now.dropped > c.counters.dropped)
        this.lost({ reason: "dropped", cpu: c.cpu, count: now.dropped - c.counters.dropped });
      c.counters = now;
    }
  }

  private lost(loss: TraceLoss): void {
    this.counts.losses++;
    this.opts.onLost(loss);
  }
}

/** The kind of change an rwbs string describes, or null for reads, flushes and the rest. */
export function opOf(rwbs: string): TracedOp | null {
  if (rwbs.includes("W")) return "write";
  if (rwbs.includes("D")) return "discard";
  if (rwbs.includes("N")) return "write-zeroes";
  return null;
}
