/**
 * The agent's CPU work on blocks, spread over one worker thread per core:
 * zero detection, SHA-256 and zstd. The main thread reads and sends; a run
 * of blocks moves to a worker and back by transfer, not copy.
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import { takeSpare } from "../base/spare.js";
import { WORKER_YOUNG_GENERATION_MB, stopWorker } from "../base/workers.js";

/** @internal to the worker. */
export interface BlockJob {
  id: number;
  buffer: ArrayBuffer;
  length: number;
  blockSize: number;
  compress: boolean;
}

/** @internal from the worker. kinds: 0 zero, 1 raw, 2 zstd. */
export interface BlockJobResult {
  id: number;
  buffer: ArrayBuffer;
  hashes: ArrayBuffer;
  kinds: ArrayBuffer;
  frames: ArrayBuffer;
  framesOffset: number;
  lengths: ArrayBuffer;
}

/** One block as the pool left it. `data` is the block (raw), its zstd frame, or empty (zero). */
export interface PreparedBlock {
  encoding: "zero" | "raw" | "zstd";
  sha256: Buffer;
  data: Buffer;
  /** The block's plain bytes (a view of the run it came in). */
  plain: Buffer;
}

/** Run buffers kept for the next runs (release): as many as reads are prepared ahead, and one more. */
const SPARE_RUNS = 4;

export class BlockPool {
  private readonly workers: Worker[] = [];
  /** The buffer each prepared run's blocks are views of, until released. */
  private readonly runBuffers = new WeakMap<PreparedBlock[], ArrayBuffer>();
  private readonly spare: ArrayBuffer[] = [];
  private readonly pending = new Map<number, { resolve(r: BlockJobResult): void; reject(e: Error): void }>();
  private next = 0;
  private failure: Error | undefined;

  /** `level` 0 sends blocks uncompressed. */
  constructor(
    readonly level = 1,
    size = Math.max(1, Math.min(4, os.availableParallelism())),
  ) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./block-worker.js", import.meta.url), {
        resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
        workerData: { level },
      });
      w.on("message", (r: BlockJobResult) => {
        const p = this.pending.get(r.id);
        this.pending.delete(r.id);
        p?.resolve(r);
      });
      const fail = (err: Error) => {
        this.failure = err;
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
      };
      w.on("error", fail);
      w.on("exit", () => {
        if (this.pending.size > 0) fail(new Error("a block worker stopped with work in hand"));
      });
      w.unref();
      this.workers.push(w);
    }
  }

  /**
   * Prepares the blocks of `data` (consecutive blocks of `blockSize`, the
   * last possibly short; or parts of whole blocks, one after another, of
   * which only the last may end in a short block). `data` is copied into a
   * transferable buffer first, so the caller may reuse it at once. The
   * blocks are views of that buffer: `release` them once sent, and it serves
   * a later run (fresh memory per run costs page faults, and freed blocks of
   * this size stay in the allocator's heaps).
   */
  async prepare(data: Buffer | Buffer[], blockSize: number, compress = true): Promise<PreparedBlock[]> {
    if (this.failure) throw this.failure;
    const parts = Array.isArray(data) ? data : [data];
    const length = parts.reduce((n, p) => n + p.length, 0);
    // A buffer of its own (not zero-filled first): it moves to the worker and back.
    const own = Buffer.from(this.takeBuffer(length), 0, length);
    let at = 0;
    for (const p of parts) at += p.copy(own, at);
    const ab = own.buffer;
    const id = this.next++;
    const w = this.workers[id % this.workers.length]!;
    const r = await new Promise<BlockJobResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const job: BlockJob = {
        id,
        buffer: ab,
        length,
        blockSize,
        compress: compress && this.level > 0,
      };
      w.postMessage(job, [ab]);
    });
    const plain = Buffer.from(r.buffer, 0, length);
    const hashes = Buffer.from(r.hashes);
    const kinds = new Uint8Array(r.kinds);
    const lengths = new Uint32Array(r.lengths);
    const frames = Buffer.from(r.frames, r.framesOffset);
    const out: PreparedBlock[] = [];
    let f = 0;
    for (let i = 0; i < kinds.length; i++) {
      const block = plain.subarray(i * blockSize, Math.min(plain.length, (i + 1) * blockSize));
      const sha256 = hashes.subarray(i * 32, i * 32 + 32);
      if (kinds[i] === 0) out.push({ encoding: "zero", sha256, data: Buffer.alloc(0), plain: block });
      else if (kinds[i] === 1) out.push({ encoding: "raw", sha256, data: block, plain: block });
      else {
        const len = lengths[i]!;
        out.push({ encoding: "zstd", sha256, data: frames.subarray(f, f + len), plain: block });
        f += len;
      }
    }
    this.runBuffers.set(out, r.buffer);
    return out;
  }

  /**
   * Takes back the buffer of blocks `prepare` returned: the caller is done
   * with them (a message that carried them is encoded: it holds a copy).
   */
  release(blocks: PreparedBlock[]): void {
    const ab = this.runBuffers.get(blocks);
    if (!ab) return;
    this.runBuffers.delete(blocks);
    if (this.spare.length < SPARE_RUNS) this.spare.push(ab);
  }

  /** A spare buffer of at least `length` bytes, else a new one. */
  private takeBuffer(length: number): ArrayBuffer {
    return takeSpare(this.spare, length) ?? Buffer.allocUnsafeSlow(length).buffer;
  }

  async close(): Promise<void> {
    this.failure ??= new Error("the block pool is closed");
    await Promise.all(this.workers.map((w) => stopWorker(w)));
  }
}
