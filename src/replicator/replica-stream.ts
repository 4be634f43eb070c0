import zstdBinding from "zstd-napi/binding.js";
import { LifeboatError } from "../base/index.js";
import type { ChunkFrames, ConsistencyLevel, Pit } from "../store/index.js";
import type { ReplicaApplier } from "./applier.js";
import { RECENT_CHUNKS_OF_A_RUN } from "./chunk-writes.js";

/** One whole block of a BLOCKS message: its bytes (raw or a zstd frame), or only its hash. */
export interface IncomingBlock {
  encoding: "raw" | "zstd" | "ref" | "zero";
  sha256: Buffer;
  data: Buffer;
}

/** What the replication stream carries, as the replicator applies it (the wire's sequenced messages). */
export type IncomingMessage =
  | { type: "BLOCKS"; disk: number; offset: number; kind: "blocks"; blocks: IncomingBlock[] }
  | {
      type: "BLOCKS";
      disk: number;
      offset: number;
      kind: "patch";
      sha256: Buffer;
      patches: { at: number; data: Buffer }[];
    }
  | {
      type: "POINT";
      pointId: string;
      consistency: ConsistencyLevel;
      takenAt: number;
      disks: { index: number; sizeBytes: number }[];
    };

export interface ReplicaStreamOptions {
  /**
   * A checkpoint runs at most this long after the first write it covers
   * (default 250 ms): the lag a write sees is about this wait plus one or two
   * checkpoints. 1 s made it 1.3–2.5 s under a steady 20 MiB/s; 100 ms spent
   * more on checkpoints than it saved.
   */
  commitIntervalMs?: number;
  /** ...or as soon as this many bytes arrived since the last one (default 16 MiB)... */
  commitBytes?: number;
  /**
   * ...or this many messages (default 512). The sender waits for
   * acknowledgements once its window is full, and they come only with a
   * checkpoint: both thresholds must stay under the wire's window (half of
   * it is right), or a full window waits for the timer.
   */
  commitFrames?: number;
  /** Every message up to `seq` is durable: the sender may forget it (send the ACK). */
  onDurable(seq: number): void;
  /** A consistency point became a PIT. */
  onPit?(pointId: string, seq: number, pit: Pit): void;
  /** A checkpoint failed: the connection must close; the sender resends what was not acknowledged. */
  onFailure(err: Error): void;
  /**
   * A patch left a block that does not hash to the sender's: the two copies
   * differed before it. Without this handler that fails the stream
   * (REPLICA_DIVERGED). With it, the stream goes on, the block is marked
   * diverged until a whole-block write to it arrives, PITs made meanwhile are
   * labelled `none`, and the handler asks the sender to resend the disk
   * (a rescan).
   */
  onDiverged?(disk: number, offset: number): void;
}

/**
 * Applies a server's replication stream to its replica with group commit:
 * messages are applied as they arrive (in order), and a checkpoint — packs
 * stored, block maps updated, the head written and synced — makes a whole
 * batch durable at once, after which `onDurable` reports the highest
 * sequence number it covers. A consistency point is a checkpoint that also
 * writes a PIT. Nothing is reported durable that a crash could lose.
 *
 * A message that fails to apply closes the stream for good, since it may have
 * changed the replica in part: the replicator drops the applier without a
 * checkpoint and the next connection starts again from the head.
 */
export class ReplicaStream {
  private readonly dctx = new zstdBinding.DCtx();
  private appliedSeq: number;
  /**
   * The last message whose writes are issued (count): what a checkpoint may
   * record. A POINT is applied before its PIT is made, and a checkpoint that
   * recorded it first would let a crash in between lose the PIT (the sender
   * resumes after what the head records and would not send it again).
   */
  private countedSeq: number;
  private durableSeq: number;
  private bytesSinceCommit = 0;
  private framesSinceCommit = 0;
  private timer: NodeJS.Timeout | undefined;
  private committing: Promise<void> = Promise.resolve();
  /** A checkpoint queued behind the running one and not started yet (commit). */
  private nextCommit: Promise<void> | undefined;
  private closed = false;
  private failed = false;
  /** submit(): messages applied one after another, in the order submitted. */
  private queue: Promise<void> = Promise.resolve();
  private readonly waiters: { seq: number; resolve(): void; reject(e: Error): void }[] = [];
  /** "disk:offset" of blocks a patch left different from the sender's copy. */
  private readonly diverged = new Set<string>();
  /**
   * "disk:offset" of blocks with patches whose hash is not checked yet (the
   * applier patches while later messages are applied): how many, and the
   * last message that wrote the whole block.
   */
  private readonly checking = new Map<string, { count: number; wholeAt: number }>();

  constructor(
    private readonly applier: ReplicaApplier,
    private readonly opts: ReplicaStreamOptions,
  ) {
    this.appliedSeq = applier.appliedSeq;
    this.countedSeq = applier.appliedSeq;
    this.durableSeq = applier.appliedSeq;
  }

  /** Whether a message failed to apply (the replica must then be reopened from its head, not checkpointed). */
  get hasFailed(): boolean {
    return this.failed;
  }

  /**
   * Applies message `seq` after every message submitted before it, and
   * resolves once it is durable (a later checkpoint covers it). Messages can
   * be submitted without waiting, so one checkpoint covers many.
   */
  submit(msg: IncomingMessage, seq: number): Promise<void> {
    const applied = this.queue.then(() => this.apply(msg, seq));
    this.queue = applied.catch(() => undefined);
    return applied.then(
      () =>
        new Promise<void>((resolve, reject) => {
          if (seq <= this.durableSeq) resolve();
          else if (this.closed) reject(closedError());
          else this.waiters.push({ seq, resolve, reject });
        }),
    );
  }

  /**
   * A new stream (not a resumed one) numbers its messages from 1 again: the
   * position the head recorded belongs to the stream before it. Only before
   * the first message.
   */
  rebase(): void {
    if (this.appliedSeq !== this.durableSeq || this.bytesSinceCommit > 0)
      throw new Error("rebase() after messages were applied");
    this.appliedSeq = 0;
    this.countedSeq = 0;
    this.durableSeq = 0;
  }

  /** The last sequence number the replica holds durably (where a resumed stream continues). */
  get lastDurable(): number {
    return this.durableSeq;
  }

  /**
   * Applies message `seq` (which must follow the last one applied). Resolves
   * when it is applied, not when it is durable: `onDurable` says that.
   */
  async apply(msg: IncomingMessage, seq: number): Promise<void> {
    if (this.closed) throw closedError();
    try {
      await this.applyOne(msg, seq);
    } catch (err) {
      // What this message did in part must never become durable: no checkpoint runs from now on,
      // and the replica is reopened from its head for the next connection.
      this.failed = true;
      this.shut(err instanceof Error ? err : new Error(String(err)));
      throw err;
    }
  }

  private async applyOne(msg: IncomingMessage, seq: number): Promise<void> {
    if (seq !== this.appliedSeq + 1) {
      throw new LifeboatError("REPLICA_OUT_OF_ORDER", `message ${seq} arrived after ${this.appliedSeq}`, {
        hint: "the sender must resume after the last acknowledged message",
      });
    }
    if (msg.type === "POINT") {
      this.appliedSeq = seq;
      await this.point(msg, seq);
      return;
    }
    const cs = this.applier.repo.config.chunkSize;
    if (msg.kind === "patch") {
      const key = `${msg.disk}:${msg.offset}`;
      const check = this.checking.get(key) ?? { count: 0, wholeAt: 0 };
      check.count++;
      this.checking.set(key, check);
      await this.applier.patchChunk(msg.disk, msg.offset, msg.patches, msg.sha256, (same) => {
        if (--check.count === 0) this.checking.delete(key);
        if (same) return;
        if (this.opts.onDiverged) {
          // A whole block written after the patch replaced what diverged.
          if (check.wholeAt > seq) return;
          this.diverged.add(key);
          this.opts.onDiverged(msg.disk, msg.offset);
          return;
        }
        const err = new LifeboatError(
          "REPLICA_DIVERGED",
          `after patching, block ${msg.offset / cs} of disk ${msg.disk} does not hash to what the sender has`,
          { hint: "the sender must send the whole block (a rescan of the disk repairs every such block)" },
        );
        this.failed = true;
        this.shut(err);
        this.opts.onFailure(err);
        throw err; // the applier fails too: nothing after the patch is checkpointed
      });
      this.count(
        seq,
        msg.patches.reduce((n, p) => n + p.data.length, 0),
      );
      return;
    }
    let offset = msg.offset;
    let bytes = 0;
    // Consecutive blocks with content go to the applier as one run: one buffer, one trip to a worker.
    let run: { offset: number; blocks: (typeof msg.blocks)[number][] } | undefined;
    const flush = async () => {
      if (run === undefined) return;
      const { offset: from, blocks } = run;
      run = undefined;
      // The worker that hashes a long run (an initial sync, a rescan) decompresses all of it but its
      // last chunks, which are decompressed here: the applier keeps them for patches that follow (a
      // patch to a chunk it does not keep reads it back, and waits for its pack to be stored).
      const inflate = Math.max(0, blocks.length - RECENT_CHUNKS_OF_A_RUN);
      const data = this.runContent(msg.disk, from, blocks, inflate);
      bytes += data.length; // before the write: it moves the buffer to a worker, which empties it here
      // A single chunk is encoded again on its own (writeChunks), so its frame would go unused.
      const frames =
        blocks.length > 1 ? framesOf(blocks, inflate, (n) => this.applier.framesBuffer(n)) : undefined;
      await this.applier.writeChunks(msg.disk, from, data, { owned: true, ...(frames ? { frames } : {}) });
    };
    for (const b of msg.blocks) {
      if (this.diverged.size) this.diverged.delete(`${msg.disk}:${offset}`);
      if (this.checking.size) {
        const check = this.checking.get(`${msg.disk}:${offset}`);
        if (check) check.wholeAt = seq;
      }
      if (b.encoding === "ref") {
        await flush();
        await this.applier.writeKnownChunk(msg.disk, offset, b.sha256);
      } else {
        run ??= { offset, blocks: [] };
        run.blocks.push(b);
      }
      offset += cs;
    }
    await flush();
    this.count(seq, bytes);
  }

  /**
   * The content of consecutive blocks from `offset`, in one buffer of its own:
   * zero blocks as zeros, compressed ones decompressed in place — or, the
   * first `inflate` blocks, left for the worker to decompress (ChunkFrames)
   * once their frame header says they hold exactly their chunk. Each block
   * must come out exactly as long as its chunk (the disk's last may be short).
   */
  private runContent(
    disk: number,
    offset: number,
    blocks: { encoding: string; data?: Uint8Array }[],
    inflate = 0,
  ): Buffer {
    const cs = this.applier.repo.config.chunkSize;
    const lengths = blocks.map((_, i) => this.chunkLength(disk, offset + i * cs));
    const total = lengths.reduce((a, b) => a + b, 0);
    // A single chunk is copied again for its own encoding (writeChunks): it takes no run buffer.
    const out = blocks.length > 1 ? this.applier.runBuffer(total) : Buffer.allocUnsafeSlow(total);
    let at = 0;
    for (const [i, b] of blocks.entries()) {
      const want = lengths[i]!;
      const dest = out.subarray(at, at + want);
      const data = b.data ?? new Uint8Array(0);
      let got: number;
      if (b.encoding === "zero") {
        dest.fill(0);
        got = want;
      } else if (b.encoding === "zstd") {
        const size = zstdBinding.getFrameContentSize(data);
        if (size !== null && size !== want) got = size;
        else if (i < inflate && size !== null && zstdBinding.findFrameCompressedSize(data) === data.length)
          got = want;
        else got = this.dctx.decompress(dest, data);
      } else {
        if (data.length === want) dest.set(data);
        got = data.length;
      }
      if (got !== want) {
        throw new LifeboatError(
          "REPLICA_BAD_WRITE",
          `block ${(offset + i * cs) / cs} of disk ${disk} holds ${got} bytes, expected ${want}`,
          { hint: "the sender must send whole blocks of the disk's size as it reported it" },
        );
      }
      at += want;
    }
    return out;
  }

  /** Ends the stream; what was applied and not checkpointed is not durable, and was never reported so. */
  async close(): Promise<void> {
    this.shut(closedError());
    await this.committing.catch(() => undefined);
  }

  private shut(err: Error): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  private durable(seq: number): void {
    this.durableSeq = seq;
    this.opts.onDurable(seq);
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.seq <= seq) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  /**
   * Checkpoints now (also used when the sender asks for an ACK, e.g. at the
   * end of initial sync). A checkpoint covers what is applied when it starts,
   * not when it was asked for: under a steady stream the thresholds are
   * reached again while one runs, and the next then takes all that arrived
   * meanwhile (one checkpoint waiting to start serves every call until it
   * does), so acknowledgements keep up with whatever rate checkpoints allow.
   */
  async commit(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.bytesSinceCommit = 0;
    this.framesSinceCommit = 0;
    let job = this.nextCommit;
    if (!job) {
      job = this.committing.then(async () => {
        this.nextCommit = undefined;
        const seq = this.countedSeq;
        if (seq <= this.durableSeq || this.closed) return;
        await this.applier.checkpoint(seq);
        this.durable(seq);
      });
      this.nextCommit = job;
      this.committing = job;
    }
    try {
      await job;
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      if (this.failed) throw e; // another caller of the same checkpoint reported it
      this.nextCommit = undefined;
      this.committing = Promise.resolve(); // the next connection starts afresh from the head
      this.failed = true;
      this.shut(e);
      this.opts.onFailure(e);
      throw e;
    }
  }

  private chunkLength(disk: number, offset: number): number {
    const cs = this.applier.repo.config.chunkSize;
    const size = this.applier.diskSize(disk);
    return Math.max(0, Math.min(cs, size - offset));
  }

  private count(seq: number, bytes: number): void {
    this.appliedSeq = seq;
    this.countedSeq = seq;
    this.bytesSinceCommit += bytes;
    this.framesSinceCommit++;
    if (
      this.bytesSinceCommit >= (this.opts.commitBytes ?? 16 << 20) ||
      this.framesSinceCommit >= (this.opts.commitFrames ?? 512)
    ) {
      void this.commit().catch(() => undefined); // reported through onFailure
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.commit().catch(() => undefined);
      }, this.opts.commitIntervalMs ?? 250);
      this.timer.unref();
    }
  }

  private async point(msg: Extract<IncomingMessage, { type: "POINT" }>, seq: number): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.bytesSinceCommit = 0;
    this.framesSinceCommit = 0;
    let pit: Pit | undefined;
    this.committing = this.committing.then(async () => {
      await this.applier.applied(); // every patch before the point has been checked
      // A block that differs from the sender's makes the point an image the disk never held.
      const diverged = msg.disks.some((d) => [...this.diverged].some((k) => k.startsWith(`${d.index}:`)));
      pit = await this.applier.makePit({
        seq,
        consistency: diverged ? "none" : msg.consistency,
        timeMs: msg.takenAt,
        labels: { point: msg.pointId },
      });
      this.durable(seq);
    });
    try {
      await this.committing;
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      this.committing = Promise.resolve();
      this.opts.onFailure(e);
      throw e;
    }
    this.opts.onPit?.(msg.pointId, seq, pit!);
  }
}

function closedError(): LifeboatError {
  return new LifeboatError("REPLICA_CLOSED", "the replica stream is closed", {
    hint: "the sender reconnects and resumes after the last acknowledged message",
  });
}

/**
 * The zstd frames of a run's compressed blocks, copied into one buffer from
 * `buffer` (the message's buffers are not the stream's to hand over), so that the
 * repository stores them as they came rather than compressing every block
 * again. runContent has checked that each decompresses to its whole block
 * (or, for the first `inflate`, that its header says so: the worker
 * decompresses it and checks).
 */
function framesOf(
  blocks: { encoding: string; data?: Uint8Array }[],
  inflate: number,
  buffer: (length: number) => Buffer,
): ChunkFrames | undefined {
  let total = 0;
  for (const b of blocks) if (b.encoding === "zstd") total += b.data?.length ?? 0;
  if (total === 0) return undefined;
  const data = buffer(total);
  const spans: number[] = [];
  let at = 0;
  for (const b of blocks) {
    if (b.encoding !== "zstd" || !b.data) {
      spans.push(-1, 0);
      continue;
    }
    data.set(b.data, at);
    spans.push(at, b.data.length);
    at += b.data.length;
  }
  return { data, spans, own: true, ...(inflate ? { inflate } : {}) };
}
