/**
 * The agent's CPU work on blocks, spread over one worker thread per core:
 * zero detection, SHA-256 and zstd. The main thread reads and sends; the
 * workers read a run's blocks from, and write its frames into, a slab of
 * shared memory that the pool keeps for later runs.
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import zstd from "zstd-napi/binding.js";
import { type Slab, type SlabRef, Slabs } from "../base/slabs.js";
import { WORKER_YOUNG_GENERATION_MB, stopWorker } from "../base/workers.js";

/** @internal to the worker: the run is in the slab at [0, length); its frames go at `framesAt`. */
export interface BlockJob extends SlabRef {
  id: number;
  length: number;
  framesAt: number;
  blockSize: number;
  compress: boolean;
}

/** @internal from the worker. kinds: 0 zero, 1 raw, 2 zstd. Frames are in the job's slab, one after another. */
export interface BlockJobResult {
  id: number;
  hashes: ArrayBuffer;
  kinds: ArrayBuffer;
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

/**
 * Released slabs kept, in bytes: what a scan holds beyond the run in hand
 * (it prepares three ahead; a reader's 8 MiB piece and its frames take 17
 * MiB), and more than the jobs a ship prepares ahead (ship.ts: nine of 3
 * MiB at most).
 */
const SPARE_SLAB_BYTES = 40 << 20;

/** Room for a run of `length` bytes and, after it, the frames of its blocks (each at most compressBound). */
function slabLayout(length: number, blockSize: number): { framesAt: number; size: number } {
  const framesAt = Math.ceil(length / 4096) * 4096;
  const n = Math.ceil(length / blockSize);
  return { framesAt, size: framesAt + n * zstd.compressBound(blockSize) };
}

export class BlockPool {
  private readonly workers: Worker[] = [];
  /** The slab each prepared run's blocks are views of, until released. */
  private readonly runSlabs = new WeakMap<PreparedBlock[], Slab>();
  private readonly slabs = new Slabs(SPARE_SLAB_BYTES);
  /** A run never released (a failed send left it) gives its slab back once it is garbage. */
  private readonly unreleased = new FinalizationRegistry<Slab>((slab) => this.slabs.giveBack(slab));
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
   * slab first, so the caller may reuse it at once. The blocks and their
   * frames are views of that slab: `release` them once sent, and it serves a
   * later run (fresh memory per run costs page faults and garbage
   * collections, and freed blocks of this size stay in the allocator's heaps).
   */
  async prepare(data: Buffer | Buffer[], blockSize: number, compress = true): Promise<PreparedBlock[]> {
    if (this.failure) throw this.failure;
    const parts = Array.isArray(data) ? data : [data];
    const length = parts.reduce((n, p) => n + p.length, 0);
    const { framesAt, size } = slabLayout(length, blockSize);
    const slab = this.slabs.take(size);
    const mem = Buffer.from(slab.memory);
    let at = 0;
    for (const p of parts) at += p.copy(mem, at);
    const id = this.next++;
    const w = this.workers[id % this.workers.length]!;
    let r: BlockJobResult;
    try {
      r = await new Promise<BlockJobResult>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        const job: BlockJob = {
          id,
          ...this.slabs.ref(slab, w),
          length,
          framesAt,
          blockSize,
          compress: compress && this.level > 0,
        };
        w.postMessage(job);
      });
    } catch (err) {
      this.slabs.giveBack(slab);
      throw err;
    }
    const plain = mem.subarray(0, length);
    const hashes = Buffer.from(r.hashes);
    const kinds = new Uint8Array(r.kinds);
    const lengths = new Uint32Array(r.lengths);
    const out: PreparedBlock[] = [];
    let f = framesAt;
    for (let i = 0; i < kinds.length; i++) {
      const block = plain.subarray(i * blockSize, Math.min(plain.length, (i + 1) * blockSize));
      const sha256 = hashes.subarray(i * 32, i * 32 + 32);
      if (kinds[i] === 0) out.push({ encoding: "zero", sha256, data: Buffer.alloc(0), plain: block });
      else if (kinds[i] === 1) out.push({ encoding: "raw", sha256, data: block, plain: block });
      else {
        const len = lengths[i]!;
        out.push({ encoding: "zstd", sha256, data: mem.subarray(f, f + len), plain: block });
        f += len;
      }
    }
    this.runSlabs.set(out, slab);
    this.unreleased.register(out, slab, out);
    return out;
  }

  /**
   * Takes back the slab of blocks `prepare` returned: the caller is done
   * with them (a message that carried them is encoded: it holds a copy).
   * The next run may be prepared in it at once.
   */
  release(blocks: PreparedBlock[]): void {
    const slab = this.runSlabs.get(blocks);
    if (!slab) return;
    this.runSlabs.delete(blocks);
    this.unreleased.unregister(blocks);
    this.slabs.giveBack(slab);
  }

  async close(): Promise<void> {
    this.failure ??= new Error("the block pool is closed");
    await Promise.all(this.workers.map((w) => stopWorker(w)));
  }
}
