import os from "node:os";
import { Worker } from "node:worker_threads";
import { WORKER_YOUNG_GENERATION_MB, stopWorker } from "../base/workers.js";
import { LifeboatError } from "../base/index.js";
import { LEAF_ENTRY_LEN, entryLocation } from "./block-map.js";
import type { RepositoryKeys } from "./keys.js";
import { Limiter } from "./limiter.js";
import { packName } from "./names.js";

/**
 * Compressed forms of a run's chunks that a writer already has (the
 * replicator: the agent's zstd frames, which it decompressed to get the run),
 * so that they are encrypted as they are instead of compressed again. Chunk
 * i's frame is `data[spans[2i], spans[2i] + spans[2i+1])`; a negative start:
 * none. A frame is used only if it is one zstd frame that declares exactly
 * the chunk's length; `data` moves to the worker.
 */
export interface ChunkFrames {
  data: Buffer;
  spans: number[];
  /**
   * `data` starts an ArrayBuffer of its own (ChunkIngest.takeFramesBuffer's),
   * which moves whole, spare room and all, instead of being copied out.
   */
  own?: boolean;
  /**
   * The chunks before this index that have a frame are not in the run's
   * buffer yet: the worker decompresses each into its place before hashing
   * (one that does not come out exactly the chunk's length fails the scan
   * with STORE_BAD_FRAME), so that the writer's main thread does not.
   */
  inflate?: number;
}

export type WorkerRequest =
  | {
      type: "scan";
      batch: number;
      buffer: ArrayBuffer;
      length: number;
      chunkSize: number;
      /** zstd frames of some of the chunks (ChunkFrames), to store as they are. */
      frames?: { data: ArrayBuffer; spans: number[]; inflate?: number };
    }
  /** The chunks to encode, by index in the batch: the worker names them by the ids it computed. */
  | { type: "encode"; batch: number; indexes: number[] }
  /** A chunk object to decode: its bytes, or where in a local pack file the worker reads them itself. */
  | {
      type: "decode";
      req: number;
      name: string;
      id: Uint8Array;
      data?: ArrayBuffer;
      file?: { path: string; offset: number; length: number };
    }
  | RestoreRunRequest
  | CheckRequest;

/**
 * Checks stored chunk objects (verify --read-data): each is bytes
 * [offset, offset + length) of a stretch of a pack, decrypted and
 * decompressed in the worker and hashed against its id. No plaintext comes
 * back, only what failed. The stretch is `data`, or where the worker reads
 * it itself in a local repository (into a buffer it reuses).
 */
export interface CheckRequest {
  type: "check";
  req: number;
  data?: ArrayBuffer;
  file?: { root: string; pack: string; offset: number; length: number };
  chunks: CheckChunk[];
}

/** Bytes of a local pack that one CheckRequest has a worker read: at most this, or one object where that is larger. */
export const CHECK_BYTES = 4 << 20;

/** A chunk object of a CheckRequest: its keyed name, its id, where it lies in the stretch. */
export interface CheckChunk {
  name: string;
  id: Uint8Array;
  offset: number;
  length: number;
}

/** A chunk object that failed a check: its index in the request, and why. */
export interface CheckFailure {
  index: number;
  code: string;
  message: string;
  hint: string;
}

/**
 * Restores a run of consecutive chunks of a disk: the worker gets the stored
 * chunk objects (reading them from their packs itself when the repository is
 * local), decodes and checks each one into a buffer of its own, and writes
 * the result to `fd` at `position`. Nothing of a run is written unless every
 * chunk in it checks out.
 */
export interface RestoreRunRequest {
  type: "restoreRun";
  req: number;
  /** The target, opened for writing by the main thread. */
  fd: number;
  /** The target opened with O_DIRECT, when it allows that: used for writes of whole pages. */
  directFd?: number;
  /** Where the run's first byte goes in the target. */
  position: number;
  /** Bytes in the run (a whole number of chunks, except at the end of the disk). */
  length: number;
  chunkSize: number;
  /** One record per stored chunk: slot in the run (u32 LE), then its block-map leaf entry. */
  entries: ArrayBuffer;
  /** A local repository's root: the worker reads the packs, from here or its trash. */
  root?: string;
  /** Otherwise the stored bytes of each stretch, in the order runStretches(…, 0) gives. */
  stretches?: ArrayBuffer[];
  /**
   * Write the whole run, zeros included (a block device holds old data);
   * otherwise only the chunks, so that zero chunks stay holes in a new file.
   */
  fill: boolean;
  /**
   * For a hash of the whole disk in order: once the run is written, copy each
   * stored chunk's bytes to its place in this buffer (at least `length`
   * bytes, shared with the main thread and reused across runs). Places of
   * zero chunks are left as they are: the main thread hashes zeros for them.
   */
  hashCopy?: SharedArrayBuffer;
}

/** Bytes of one record of RestoreRunRequest.entries. */
export const RUN_RECORD_LEN = 4 + LEAF_ENTRY_LEN;

/** A chunk of a run, as both threads see it. */
export interface RunItem {
  slot: number;
  entry: Buffer;
  pack: string;
  offset: number;
  length: number;
}

/** The records of RestoreRunRequest.entries. */
export function runItems(entries: Uint8Array): RunItem[] {
  const b = Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength);
  const items: RunItem[] = [];
  for (let at = 0; at + RUN_RECORD_LEN <= b.length; at += RUN_RECORD_LEN) {
    const entry = b.subarray(at + 4, at + RUN_RECORD_LEN);
    const loc = entryLocation(entry);
    items.push({
      slot: b.readUInt32LE(at),
      entry,
      pack: packName(loc.pack),
      offset: loc.offset,
      length: loc.length,
    });
  }
  return items;
}

/**
 * The chunks of a run grouped into stretches that one read of a pack fetches:
 * sorted by pack and offset, a new stretch where the gap to the previous
 * chunk exceeds `maxGap` bytes (reading a small gap costs less than another read).
 */
export function runStretches<T extends { pack: string; offset: number; length: number }>(
  items: readonly T[],
  maxGap: number,
): T[][] {
  const sorted = [...items].sort((a, b) =>
    a.pack === b.pack ? a.offset - b.offset : a.pack < b.pack ? -1 : 1,
  );
  const out: T[][] = [];
  let end = 0;
  for (const it of sorted) {
    const group = out.at(-1);
    if (group && group[0]!.pack === it.pack && it.offset <= end + maxGap) group.push(it);
    else {
      out.push([it]);
      end = 0;
    }
    end = Math.max(end, it.offset + it.length);
  }
  return out;
}

export type WorkerResponse =
  | { type: "scanned"; batch: number; ids: ArrayBuffer }
  | {
      type: "encoded";
      batch: number;
      /** Each object is bytes [offset, offset + size) of `data`. */
      objects: { index: number; name: string; offset: number; size: number }[];
      data: ArrayBuffer;
      /** The batch's ChunkFrames buffer, handed back for reuse (every frame is in `data` now). */
      frames?: ArrayBuffer;
    }
  | { type: "decoded"; req: number; plain: ArrayBuffer }
  | { type: "restored"; req: number }
  | { type: "checked"; req: number; failed: CheckFailure[] }
  | {
      type: "failed";
      req: number;
      code: string;
      message: string;
      hint: string;
      slot?: number;
      /** A system error of the target (code is its errno name), not damage. */
      errno?: boolean;
    };

/** Runs in flight per worker: while one is decoded, the reads of the next are under way. */
export const RUNS_PER_WORKER = 3;

interface Pending {
  resolve(v: WorkerResponse): void;
  reject(e: unknown): void;
}

/**
 * One chunk worker per core. A batch (a run of consecutive chunks read from a
 * disk) is scanned by one worker, which keeps it until the main thread says
 * which of its chunks are new and must be encoded. Buffers move between
 * threads by transfer, never by copy.
 */
export class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<string, Pending>();
  private readonly owner = new Map<number, Worker>();
  /** Runs being restored and stretches being checked by each worker. */
  private readonly load = new Map<Worker, number>();
  /** Runs and stretches in flight across every export or verify using the pool, so that sharing it does not multiply memory. */
  private readonly runSlots: Limiter;
  private nextBatch = 0;
  private nextReq = 0;
  private rr = 0;
  private failure: Error | undefined;

  /**
   * `youngGenerationMb` caps each worker's young generation (default
   * WORKER_YOUNG_GENERATION_MB).
   */
  constructor(
    keys: RepositoryKeys,
    compressionLevel: number,
    size = Math.max(1, os.availableParallelism()),
    opts: { youngGenerationMb?: number } = {},
  ) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./chunk-worker.js", import.meta.url), {
        resourceLimits: { maxYoungGenerationSizeMb: opts.youngGenerationMb ?? WORKER_YOUNG_GENERATION_MB },
        workerData: {
          encryptionKey: new Uint8Array(keys.encryptionKey),
          namingKey: new Uint8Array(keys.namingKey),
          compressionLevel,
        },
      });
      w.on("message", (msg: WorkerResponse) => this.settle(msg));
      w.on("error", (err) => this.fail(err));
      w.on("exit", () => {
        if (this.pending.size > 0)
          this.fail(new LifeboatError("STORE_IO", "a chunk worker stopped with work in hand"));
      });
      this.workers.push(w);
    }
    this.runSlots = new Limiter(RUNS_PER_WORKER * this.workers.length);
  }

  private settle(msg: WorkerResponse): void {
    const key =
      msg.type === "scanned" || msg.type === "encoded" ? `${msg.type}:${msg.batch}` : `req:${msg.req}`;
    const p = this.pending.get(key);
    this.pending.delete(key);
    if (!p) return;
    if (msg.type === "failed" && msg.errno) {
      p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
    } else if (msg.type === "failed") {
      const err = new LifeboatError(msg.code, msg.message, { hint: msg.hint });
      p.reject(msg.slot === undefined ? err : Object.assign(err, { slot: msg.slot }));
    } else p.resolve(msg);
  }

  private fail(err: Error): void {
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** `failKey`: where a "failed" reply for this request arrives, when not under `key`. */
  private send(
    w: Worker,
    key: string,
    msg: WorkerRequest,
    transfer: ArrayBuffer[],
    failKey?: string,
  ): Promise<WorkerResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const settle = {
        resolve: (v: WorkerResponse) => {
          if (failKey) this.pending.delete(failKey);
          resolve(v);
        },
        reject: (e: unknown) => {
          this.pending.delete(key);
          if (failKey) this.pending.delete(failKey);
          reject(e instanceof Error ? e : new Error(String(e)));
        },
      };
      this.pending.set(key, settle);
      if (failKey) this.pending.set(failKey, settle);
      w.postMessage(msg, transfer);
    });
  }

  private pick(): Worker {
    const w = this.workers[this.rr++ % this.workers.length]!;
    return w;
  }

  /** Hashes each chunk of `buffer` (ownership moves to the worker); zero chunks get the all-zero id. */
  async scan(
    buffer: Buffer,
    chunkSize: number,
    frames?: ChunkFrames,
  ): Promise<{ batch: number; ids: Buffer }> {
    const batch = this.nextBatch++;
    const w = this.pick();
    this.owner.set(batch, w);
    const ab = buffer.buffer as ArrayBuffer;
    if (buffer.byteOffset !== 0 || ab.byteLength < buffer.length)
      throw new Error("scan needs a buffer of its own");
    const f = frames && {
      data:
        frames.own && frames.data.byteOffset === 0
          ? (frames.data.buffer as ArrayBuffer)
          : transferable(frames.data),
      spans: frames.spans,
      ...(frames.inflate ? { inflate: frames.inflate } : {}),
    };
    const r = await this.send(
      w,
      `scanned:${batch}`,
      { type: "scan", batch, buffer: ab, length: buffer.length, chunkSize, ...(f ? { frames: f } : {}) },
      f ? [ab, f.data] : [ab],
      `req:${-1 - batch}`,
    );
    return { batch, ids: Buffer.from((r as { ids: ArrayBuffer }).ids) };
  }

  /**
   * Compresses and encrypts the given chunks of a scanned batch (in order),
   * and frees the batch. The objects come back in `buffer`: the batch's own
   * buffer when they fit in it (so the caller may reuse it once done with
   * the objects), else a new one. The batch's ChunkFrames buffer, if it had
   * one, comes back too (`frames`), for the caller to reuse.
   */
  async encode(
    batch: number,
    indexes: number[],
  ): Promise<{
    objects: { index: number; name: string; size: number; data: Buffer }[];
    buffer: ArrayBuffer;
    frames?: ArrayBuffer;
  }> {
    const w = this.owner.get(batch)!;
    this.owner.delete(batch);
    const msg: WorkerRequest = { type: "encode", batch, indexes };
    const r = await this.send(w, `encoded:${batch}`, msg, [], `req:${-1 - batch}`);
    const { objects, data, frames } = r as Extract<WorkerResponse, { type: "encoded" }>;
    return {
      objects: objects.map((o) => ({
        index: o.index,
        name: o.name,
        size: o.size,
        data: Buffer.from(data, o.offset, o.size),
      })),
      buffer: data,
      ...(frames ? { frames } : {}),
    };
  }

  /** Decrypts, decompresses and checks a chunk object against its id. */
  async decode(name: string, id: Uint8Array, data: Buffer): Promise<Buffer> {
    const req = this.nextReq++;
    const ab = transferable(data);
    // A copy of the id: a view would carry its whole underlying buffer across.
    const msg: WorkerRequest = { type: "decode", req, name, id: new Uint8Array(id), data: ab };
    const r = await this.send(this.pick(), `req:${req}`, msg, [ab]);
    return Buffer.from((r as { plain: ArrayBuffer }).plain);
  }

  /**
   * Reads a chunk object from a pack file of a local repository (`length`
   * bytes at `offset`), then decodes it as decode() does; the main thread
   * does neither the read nor the allocation. A file that is not there
   * rejects with its errno code (ENOENT), not as damage.
   */
  async decodeFrom(
    file: { path: string; offset: number; length: number },
    name: string,
    id: Uint8Array,
  ): Promise<Buffer> {
    const req = this.nextReq++;
    const msg: WorkerRequest = { type: "decode", req, name, id: new Uint8Array(id), file };
    const r = await this.send(this.pick(), `req:${req}`, msg, []);
    return Buffer.from((r as { plain: ArrayBuffer }).plain);
  }

  /**
   * Checks the chunk objects of a stretch of a pack (CheckRequest): its
   * bytes (which move to the worker unless they are a view of a larger
   * buffer, then copied), or where in a local repository the worker reads
   * them. Resolves with the chunks that failed; rejects when the stretch
   * cannot be read.
   */
  async check(
    stretch: Buffer | NonNullable<CheckRequest["file"]>,
    chunks: CheckChunk[],
  ): Promise<CheckFailure[]> {
    const ab = Buffer.isBuffer(stretch) ? transferable(stretch) : undefined;
    const where = ab ? { data: ab } : { file: stretch as NonNullable<CheckRequest["file"]> };
    const r = await this.onLeastLoaded((w, req) =>
      this.send(w, `req:${req}`, { type: "check", req, chunks, ...where }, ab ? [ab] : []),
    );
    return (r as Extract<WorkerResponse, { type: "checked" }>).failed;
  }

  /**
   * Sends a request of the kinds that read packs (a run to restore, a
   * stretch to check) to the worker with the fewest in hand, once one of the
   * pool's slots for them is free: RUNS_PER_WORKER per worker, whose buffers
   * the worker keeps for the next.
   */
  private onLeastLoaded(send: (w: Worker, req: number) => Promise<WorkerResponse>): Promise<WorkerResponse> {
    return this.runSlots.run(async () => {
      const req = this.nextReq++;
      let w = this.workers[0]!;
      for (const c of this.workers) if ((this.load.get(c) ?? 0) < (this.load.get(w) ?? 0)) w = c;
      this.load.set(w, (this.load.get(w) ?? 0) + 1);
      try {
        return await send(w, req);
      } finally {
        this.load.set(w, this.load.get(w)! - 1);
      }
    });
  }

  /** Workers in the pool. */
  get size(): number {
    return this.workers.length;
  }

  /**
   * Restores a run of chunks into the target (RestoreRunRequest), on the
   * worker with the fewest runs in hand. Rejects with the error of the
   * run's first bad chunk, its `slot` set.
   */
  async restoreRun(msg: Omit<RestoreRunRequest, "type" | "req">): Promise<void> {
    await this.onLeastLoaded((w, req) =>
      this.send(w, `req:${req}`, { type: "restoreRun", req, ...msg }, [
        msg.entries,
        ...(msg.stretches ?? []),
      ]),
    );
  }

  async close(): Promise<void> {
    this.failure ??= new LifeboatError("STORE_IO", "the chunk worker pool is closed");
    await Promise.all(this.workers.map((w) => stopWorker(w)));
  }
}

/** The buffer's memory as a transferable ArrayBuffer, copied only when it shares a larger one. */
export function transferable(b: Buffer): ArrayBuffer {
  const ab = b.buffer as ArrayBuffer;
  if (b.byteOffset === 0 && ab.byteLength === b.length && !(ab instanceof SharedArrayBuffer)) return ab;
  return ab.slice(b.byteOffset, b.byteOffset + b.length);
}
