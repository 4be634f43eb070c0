/**
 * The agent's replication engine: one per source server. It owns the disks
 * (an O_DIRECT reader and two dirty sets each, a trace tracker where the
 * kernel offers one), the wire session to the replicator and the worker
 * pool, and runs one loop that does, in order of priority:
 *
 *  1. initial syncs and rescans (read the whole disk, send what the replica
 *     lacks: zero blocks as such, blocks the repository holds as references,
 *     the rest compressed);
 *  2. consistency points (drain, freeze, read what is dirty, thaw, ship, mark);
 *  3. continuous shipping of traced writes.
 *
 * Traced writes land first in a disk's `fresh` set, which moves into
 * `settled` every `settleMs` (batching), or at once when nothing is being
 * shipped. The trace sees a write when it is queued, not when it completes,
 * and a block read while a write to it is in flight returns the bytes from
 * before it: continuous shipping skips blocks that InFlight says have writes
 * in flight and comes back to them. A consistency point reads both sets
 * while the filesystems are frozen, when every write has completed.
 *
 * Nothing here writes to a file while filesystems are frozen: the status
 * callback is skipped and log records wait until the thaw.
 *
 * The passes live beside the engine, which hands each the little it needs of
 * its state: scan.ts reads a whole disk (initial syncs and rescans), ship.ts
 * reads dirty blocks and sends them (continuous shipping, and the reads and
 * sends of a consistency point), blocks-messages.ts puts whole blocks into
 * BLOCKS frames for both, point.ts makes consistency points, and sender.ts
 * sends under the bandwidth cap and keeps what is sent and not yet
 * acknowledged. This file keeps the loop, the disks, the session and the
 * queue of consistency points.
 */
import type { Duplex } from "node:stream";
import { type Clock, LifeboatError, type Logger, silentLogger, systemClock } from "../base/index.js";
import { AgentSession, type Command, type PointDone, type Welcome } from "../wire/index.js";
import { blockDeviceSizeBytes, deviceNumbers, statDisk } from "../store/block-device.js";
import { SpareBuffers } from "../base/spare.js";
import { BlockPool } from "./block-pool.js";
import type { AgentDisk, AgentSettings } from "./config.js";
import { type DiskChange, applyDiskChange } from "./disk-changes.js";
import { type DiskRun, closeDiskRun, openDiskRun } from "./disk-run.js";
import {
  type PointContext,
  type PointRequest,
  type PointResult,
  RETRY_AFTER_RESCAN,
  makePoint,
} from "./point.js";
import { DiskReader } from "../store/disk-reader.js";
import { type ScanContext, scanDisk } from "./scan.js";
import { Sender } from "./sender.js";
import { type ShipContext, shipSettled } from "./ship.js";
import { type AgentStatus, agentState, diskStatus, earliest } from "./status.js";
import { within } from "./within.js";

export type { PointRequest, PointResult } from "./point.js";

export interface ReplicationOptions {
  serverId: string;
  hostname: string;
  version: string;
  disks: AgentDisk[];
  blockSize: number;
  settings: AgentSettings;
  /** Opens a connection to the replicator. */
  connect(): Promise<Duplex>;
  /** The wire resume token the agent kept from its last run, if any. */
  resumeToken?: string;
  /** A connection to the replicator ended (the session reconnects unless the error is permanent). */
  onDisconnect?(err: LifeboatError): void;
  /** The disks' generation ids for HELLO (the control plane's split-brain check), asked at every connection. */
  generations?(): { index: number; generation: string }[] | undefined;
  /** zstd level for blocks on the wire (0: uncompressed; default 1). */
  compressionLevel?: number;
  /** How often disk sizes are checked (default 10 s). */
  sizeCheckMs?: number;
  /** A step of the loop failed (a disk may have gone: the caller checks them sooner). */
  onStepFailed?(err: LifeboatError): void;
  /** Wait between moving fresh writes to the settled set (DEFAULT_SETTLE_MS). */
  settleMs?: number;
  /**
   * Runs while the filesystems are frozen, after the dirty blocks were read
   * (tests snapshot the device here). It must not write to a frozen filesystem.
   */
  whileFrozen?(point: { pointId: string; takenAt: number }): Promise<void>;
  clock?: Clock;
  logger?: Logger;
}

interface QueuedPoint {
  req: PointRequest;
  resolve(r: PointResult): void;
  reject(e: unknown): void;
}

/**
 * Traced writes become due for shipping in batches this far apart while
 * shipping goes on. After a quiet spell the tracker's next events wake the
 * idle loop and are due at once (rotate); the idle loop also wakes on this
 * period for its other checks.
 */
const DEFAULT_SETTLE_MS = 200;

export class Replication {
  private wire: AgentSession | undefined;
  private readonly disks: DiskRun[] = [];
  private readonly pool: BlockPool;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly points: QueuedPoint[] = [];
  private readonly pointWaiters = new Map<string, (done: PointDone) => void>();
  private welcome: Welcome | undefined;
  private connected = false;
  private stopping = false;
  private frozen = false;
  private wake: (() => void) | undefined;
  /** The loop waits in idle() (not after a failed step, nor for writes in flight to complete). */
  private idling = false;
  private loopDone: Promise<void> = Promise.resolve();
  private lastRotate = 0;
  private lastSizeCheck = 0;
  private lastPit: AgentStatus["lastPit"];
  private lastError: AgentStatus["lastError"];
  /** Sending under the cap, and what is sent and not yet acknowledged (sender.ts). */
  private readonly sender: Sender;
  private pointSeq = 0;
  /** Changes of the disk set waiting for the loop (changeDisks). */
  private readonly diskChanges: DiskChange[] = [];
  readonly counters = { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 };
  /** What the scan and shipping passes use of the engine (scan.ts, ship.ts). */
  private readonly passes: ScanContext & ShipContext;
  /** What consistency points use of the engine (point.ts). */
  private readonly pointContext: PointContext;

  constructor(private readonly opts: ReplicationOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger ?? silentLogger;
    this.pool = new BlockPool(opts.compressionLevel ?? 1);
    this.sender = new Sender(this.clock, opts.settings.bandwidthMbps, this.counters, () => this.session);
    this.passes = {
      blockSize: opts.blockSize,
      pool: this.pool,
      clock: this.clock,
      log: this.log,
      counters: this.counters,
      stopping: () => this.stopping,
      maxBlocksPerFrame: () => this.welcome?.limits.maxBlocksPerFrame,
      have: (hashes) => this.session.have(hashes),
      send: (msg, since) => this.sender.send(msg, since),
      owe: (d, kind) => this.owe(d, kind),
      shipping: this.sender.shipping,
      progressed: () => this.sender.progressed(),
      bytesPerSecond: () => this.sender.bandwidth.bytesPerSecond,
      batchBuffers: new SpareBuffers(2),
    };
    this.pointContext = {
      disks: this.disks,
      passes: this.passes,
      settings: opts.settings,
      blockSize: opts.blockSize,
      clock: this.clock,
      log: this.log,
      counters: this.counters,
      nextPointSeq: () => ++this.pointSeq,
      setFrozen: (frozen) => {
        this.frozen = frozen;
      },
      rotate: () => this.rotate(),
      send: (msg, since) => this.sender.send(msg, since),
      whenAcked: (seq) => this.session.whenAcked(seq),
      pointWaiters: this.pointWaiters,
      committed: (r) => {
        this.sender.progressed();
        if (r.pitId !== undefined)
          this.lastPit = { pitId: r.pitId, takenAt: r.takenAt, consistency: r.consistency };
      },
      ...(opts.whileFrozen ? { whileFrozen: (point) => opts.whileFrozen!(point) } : {}),
    };
  }

  /** Opens the disks and their trackers, connects, and starts the loop. */
  async start(): Promise<void> {
    try {
      for (const cfg of this.opts.disks) this.disks.push(await this.openDisk(cfg));
      this.wire = new AgentSession({
        connect: () => this.opts.connect(),
        agent: { serverId: this.opts.serverId, hostname: this.opts.hostname, version: this.opts.version },
        disks: () =>
          this.disks.map((d) => ({
            index: d.cfg.index,
            id: d.cfg.id,
            sizeBytes: d.size,
            blockSize: this.opts.blockSize,
          })),
        ...(this.opts.resumeToken ? { resumeToken: this.opts.resumeToken } : {}),
        ...(this.opts.generations ? { generations: () => this.opts.generations?.() } : {}),
        logger: this.log,
        clock: this.clock,
        onWelcome: (w) => this.onWelcome(w),
        onCommand: (c) => this.onCommand(c),
        onPointDone: (d) => this.pointWaiters.get(d.pointId)?.(d),
        onDisconnect: (err) => {
          this.connected = false;
          this.lastError = { code: err.code, message: err.message, at: this.clock.now() };
          this.opts.onDisconnect?.(err);
        },
      });
      await this.wire.start();
    } catch (err) {
      await this.closeDisks();
      await this.pool.close();
      throw err;
    }
    this.loopDone = this.loop();
  }

  /** The wire session (after start). */
  get session(): AgentSession {
    if (!this.wire) throw new Error("start() first");
    return this.wire;
  }

  /** The indexes of the disks replicated now. */
  get diskIndexes(): number[] {
    return this.disks.map((d) => d.cfg.index);
  }

  /**
   * Replicates `want` from now on, between two steps of the loop
   * (disk-changes.ts): a disk it names that is not replicated yet is opened
   * and owes an initial sync (a rescan when its index is in `rescan`: the
   * replica may hold an older copy); a replicated disk it does not name is
   * let go once what was sent of it is acknowledged. The session then
   * reconnects, so the replicator learns the new set from the HELLO. The
   * other disks go on as they were. Resolves once applied, with the indexes
   * opened, let go, and those that could not be opened.
   */
  changeDisks(
    want: AgentDisk[],
    rescan: number[] = [],
  ): Promise<{ added: number[]; removed: number[]; failed: number[] }> {
    if (this.stopping) return Promise.reject(stoppedError());
    return new Promise((resolve, reject) => {
      this.diskChanges.push({ want, rescan: new Set(rescan), resolve, reject });
      this.wake?.();
    });
  }

  /** `trace` when every disk has a tracker, else `scan`. */
  get tracker(): "trace" | "scan" {
    return this.disks.length > 0 && this.disks.every((d) => d.tracker) ? "trace" : "scan";
  }

  /** Asks for a consistency point; resolves when its PIT is committed. */
  requestPoint(req: PointRequest = {}): Promise<PointResult> {
    if (this.stopping) return Promise.reject(stoppedError());
    return new Promise((resolve, reject) => {
      this.points.push({ req, resolve, reject });
      this.wake?.();
    });
  }

  /** Rescans the given disks (all when omitted). */
  requestRescan(disks?: number[]): void {
    for (const d of this.disks) if (!disks || disks.includes(d.cfg.index)) this.owe(d, "rescan");
    this.wake?.();
  }

  /** Caps what the agent sends, in Mbit/s (0: no cap); takes effect at once. */
  setBandwidth(mbps: number): void {
    this.sender.bandwidth.set(mbps);
  }

  /** What `agent status` shows, or null while filesystems are frozen (nothing may be written then). */
  status(): AgentStatus | null {
    if (this.frozen || !this.wire) return null;
    const now = this.clock.now();
    let { bytes: backlog, oldest } = this.sender.backlog();
    const disks = this.disks.map((d) => {
      const one = diskStatus(d, now, this.session.lastAcked);
      backlog += one.backlogBytes;
      oldest = earliest(oldest, one.oldest);
      return one.status;
    });
    const lagSeconds = oldest === null ? 0 : Math.max(0, (now - oldest) / 1000);
    const state = agentState({
      welcomed: this.welcome !== undefined,
      disks,
      backlogBytes: backlog,
      lagSeconds,
      msSinceProgress: now - this.sender.lastProgress,
      settings: this.opts.settings,
    });
    return {
      state,
      tracker: this.tracker,
      lagSeconds: Math.round(lagSeconds * 1000) / 1000,
      backlogBytes: backlog,
      disks,
      serverId: this.opts.serverId,
      pid: process.pid,
      updatedAt: now,
      connected: this.connected,
      ...(this.lastPit ? { lastPit: this.lastPit } : {}),
      counters: { ...this.counters },
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  /**
   * Stops: finishes the step in progress, fails queued points, waits up to
   * `drainMs` for what was sent to be acknowledged, then closes everything.
   */
  async stop(drainMs = 5000): Promise<void> {
    if (this.stopping) return this.loopDone;
    this.stopping = true;
    this.wake?.();
    await this.loopDone;
    for (const p of this.points.splice(0)) p.reject(stoppedError());
    for (const c of this.diskChanges.splice(0)) c.reject(stoppedError());
    if (!this.wire) return;
    const last = this.session.lastAcked;
    const sent = last + this.session.inFlight.frames;
    if (sent > last)
      await within(
        this.session.whenAcked(sent).catch(() => undefined),
        drainMs,
      );
    await this.wire?.close();
    await this.closeDisks();
    await this.pool.close();
  }

  private async closeDisks(): Promise<void> {
    await Promise.allSettled(this.disks.map((d) => closeDiskRun(d)));
  }

  private openDisk(cfg: AgentDisk): Promise<DiskRun> {
    return openDiskRun(cfg, {
      blockSize: this.opts.blockSize,
      settings: this.opts.settings,
      clock: this.clock,
      log: this.log,
      onLost: (run, loss) => {
        this.counters.traceLosses++;
        if (!this.frozen)
          this.log.warn({ disk: cfg.path, ...loss, error: undefined }, "trace events lost; rescanning");
        this.owe(run, "rescan");
      },
      onWrites: () => {
        if (this.idling && this.sendingIdle()) this.wake?.();
      },
    });
  }

  /** Applies the oldest queued change of the disk set (changeDisks); a failure rejects it. */
  private async nextDiskChange(): Promise<void> {
    const change = this.diskChanges.shift()!;
    try {
      change.resolve(
        await applyDiskChange(change, {
          disks: this.disks,
          session: this.session,
          open: (cfg) => this.openDisk(cfg),
          stopping: () => this.stopping,
          clock: this.clock,
          log: this.log,
        }),
      );
    } catch (err) {
      change.reject(err);
    }
  }

  private owe(d: DiskRun, kind: "initial" | "rescan"): void {
    if (d.pass) d.rescanAgain = true;
    else if (d.owed !== "initial") d.owed = kind;
  }

  private onWelcome(w: Welcome): void {
    const first = !this.welcome;
    this.welcome = w;
    this.connected = true;
    this.sender.progressed();
    if (first) {
      // The replica has nothing of a disk whose lastAcked is 0: initial sync. Otherwise a rescan,
      // since nothing tracked the writes made while the agent was not running.
      for (const d of this.disks) {
        const acked = w.disks.find((x) => x.index === d.cfg.index)?.lastAcked ?? 0;
        d.owed = acked === 0 ? "initial" : "rescan";
      }
    } else if (!w.resumed) {
      // The replicator lost the stream: what it had not made durable is gone.
      this.log.warn({}, "the replicator did not know the stream; rescanning every disk");
      this.sender.forgetOutstanding();
      for (const d of this.disks) this.owe(d, "rescan");
    }
    this.wake?.();
  }

  private onCommand(c: Command): void {
    if (c.command === "rescan") this.requestRescan(c.disks);
    else if (c.command === "set-bandwidth") this.setBandwidth(c.mbps);
    else
      this.requestPoint(c.consistency ? { consistency: c.consistency } : {}).catch((err: unknown) =>
        this.log.warn({ err: String(err) }, "a point the replicator asked for failed"),
      );
  }

  private async loop(): Promise<void> {
    while (!this.stopping) {
      try {
        if (this.diskChanges.length) {
          await this.nextDiskChange();
          continue;
        }
        this.rotate();
        await this.checkSizes();
        const owed = this.disks.find((d) => d.owed);
        if (owed) await scanDisk(owed, this.passes);
        else if (this.points.length) await this.point(this.points.shift()!);
        else if (this.disks.some((d) => !d.settled.isEmpty)) {
          // Only blocks with writes in flight left: give the device a moment.
          if ((await shipSettled(this.disks, this.passes)) === 0) await this.pauseFor(20);
        } else await this.idle();
      } catch (err) {
        if (this.stopping) break;
        const e =
          err instanceof LifeboatError ? err : new LifeboatError("AGENT_IO", String(err), { cause: err });
        this.lastError = { code: e.code, message: e.message, at: this.clock.now() };
        this.log.error({ code: e.code, err: e.message }, "replication step failed; retrying");
        this.opts.onStepFailed?.(e);
        await this.pauseFor(1000);
      }
    }
  }

  private get settleMs(): number {
    return this.opts.settleMs ?? DEFAULT_SETTLE_MS;
  }

  private async idle(): Promise<void> {
    this.idling = true;
    try {
      await this.pauseFor(Math.max(10, this.lastRotate + this.settleMs - this.clock.now()));
    } finally {
      this.idling = false;
    }
  }

  private async pauseFor(ms: number): Promise<void> {
    await Promise.race([this.clock.sleep(ms), new Promise<void>((r) => (this.wake = r))]);
    this.wake = undefined;
  }

  /**
   * A disk that grew or shrank: its reader is opened again, its dirty sets
   * follow the new size (new space is dirty), and the session reconnects so
   * that the HELLO tells the replicator the new size before any block of it.
   */
  private async checkSizes(): Promise<void> {
    const now = this.clock.now();
    if (now - this.lastSizeCheck < (this.opts.sizeCheckMs ?? 10_000)) return;
    this.lastSizeCheck = now;
    let changed = false;
    for (const d of this.disks) {
      // A device that reads as size 0 (or not at all) is gone, not shrunk: disk-changes.ts sees to it.
      const size = await sizeOf(d.cfg.path).catch(() => 0);
      if (size === 0 || size === d.size) continue;
      const old = d.size;
      await d.reader.close();
      d.reader = await DiskReader.open(d.cfg.path, { logger: this.log });
      d.size = d.reader.size;
      d.fresh = d.fresh.resized(d.size);
      d.settled = d.settled.resized(d.size);
      if (d.size > old) d.settled.add(old, d.size - old, now);
      this.log.warn({ disk: d.cfg.path, from: old, to: d.size }, "disk size changed");
      changed = true;
    }
    if (changed) this.session.reconnect("a disk changed size");
  }

  /**
   * What the tracker marked becomes due for shipping: every batching period
   * while shipping goes on, and at once when nothing is being shipped (the
   * first writes after a quiet spell need not wait for a batch to form: the
   * next ones gather while these are on their way).
   */
  private rotate(): void {
    const now = this.clock.now();
    if (now - this.lastRotate < this.settleMs && !this.sendingIdle()) return;
    this.lastRotate = now;
    for (const d of this.disks) if (!d.fresh.isEmpty) d.settled.merge(d.fresh.take());
  }

  /** Nothing is due, being read or sent, or waiting for its acknowledgement. */
  private sendingIdle(): boolean {
    return this.wire !== undefined && this.sender.idle && this.disks.every((d) => d.settled.isEmpty);
  }

  // ---- consistency points ----------------------------------------------------

  private async point(q: QueuedPoint): Promise<void> {
    try {
      q.resolve(await makePoint(q.req, this.pointContext));
    } catch (err) {
      // Trace events were lost while the point was made: what it read may miss writes. The
      // rescan that the loss asked for runs first, then the point is made again.
      if (err === RETRY_AFTER_RESCAN && !this.stopping) this.points.unshift(q);
      else q.reject(err);
    }
  }
}

/** A disk's size now: a block device's from sysfs, an image file's from stat. */
async function sizeOf(file: string): Promise<number> {
  const st = await statDisk(file);
  if (!st.isBlockDevice()) return st.size;
  const { major, minor } = deviceNumbers(st.rdev);
  return blockDeviceSizeBytes(major, minor);
}

function stoppedError(): LifeboatError {
  return new LifeboatError("AGENT_STOPPING", "the agent is stopping", {
    hint: "ask again once it runs (lifeboat agent status)",
  });
}
