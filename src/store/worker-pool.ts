import os from "node:os";
import { Worker } from "node:worker_threads";
import { LifeboatError } from "../base/index.js";
import type { RepositoryKeys } from "./keys.js";

export type WorkerRequest =
  | { type: "scan"; batch: number; buffer: ArrayBuffer; length: number; chunkSize: number }
  | { type: "encode"; batch: number; chunks: { index: number; id: Uint8Array }[] }
  | { type: "decode"; req: number; name: string; id: Uint8Array; data: ArrayBuffer }
  | {
      type: "decodeRun";
      req: number;
      length: number;
      chunkSize: number;
      items: { slot: number; name: string; id: Uint8Array; data: ArrayBuffer }[];
    }
  | {
      type: "readRun";
      req: number;
      length: number;
      chunkSize: number;
      root: string;
      /** `name`: the chunk's keyed name; `pack`: the pack object holding it at [offset, offset+length). */
      items: { slot: number; name: string; id: Uint8Array; pack: string; offset: number; length: number }[];
    };

export type WorkerResponse =
  | { type: "scanned"; batch: number; ids: ArrayBuffer }
  | {
      type: "encoded";
      batch: number;
      /** Each object is bytes [offset, offset + size) of `data`. */
      objects: { index: number; name: string; offset: number; size: number }[];
      data: ArrayBuffer;
    }
  | { type: "decoded"; req: number; plain: ArrayBuffer }
  | { type: "failed"; req: number; code: string; message: string; hint: string; slot?: number };

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
  private nextBatch = 0;
  private nextReq = 0;
  private rr = 0;
  private failure: Error | undefined;

  constructor(keys: RepositoryKeys, compressionLevel: number, size = Math.max(1, os.availableParallelism())) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL("./chunk-worker.js", import.meta.url), {
        workerData: {
          encryptionKey: new Uint8Array(keys.encryptionKey),
          namingKey: new Uint8Array(keys.namingKey),
          compressionLevel,
        },
      });
      w.on("message", (msg: WorkerResponse) => this.settle(msg));
      w.on("error", (err) => this.fail(err));
      this.workers.push(w);
    }
  }

  private settle(msg: WorkerResponse): void {
    const key =
      msg.type === "scanned" || msg.type === "encoded" ? `${msg.type}:${msg.batch}` : `req:${msg.req}`;
    const p = this.pending.get(key);
    this.pending.delete(key);
    if (!p) return;
    if (msg.type === "failed") {
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
  async scan(buffer: Buffer, chunkSize: number): Promise<{ batch: number; ids: Buffer }> {
    const batch = this.nextBatch++;
    const w = this.pick();
    this.owner.set(batch, w);
    const ab = buffer.buffer as ArrayBuffer;
    if (buffer.byteOffset !== 0 || ab.byteLength < buffer.length)
      throw new Error("scan needs a buffer of its own");
    const r = await this.send(
      w,
      `scanned:${batch}`,
      { type: "scan", batch, buffer: ab, length: buffer.length, chunkSize },
      [ab],
    );
    return { batch, ids: Buffer.from((r as { ids: ArrayBuffer }).ids) };
  }

  /** Compresses and encrypts the given chunks of a scanned batch (in order), and frees the batch. */
  async encode(
    batch: number,
    chunks: { index: number; id: Uint8Array }[],
  ): Promise<{ index: number; name: string; size: number; data: Buffer }[]> {
    const w = this.owner.get(batch)!;
    this.owner.delete(batch);
    const msg: WorkerRequest = { type: "encode", batch, chunks };
    const r = await this.send(w, `encoded:${batch}`, msg, [], `req:${-1 - batch}`);
    const { objects, data } = r as Extract<WorkerResponse, { type: "encoded" }>;
    return objects.map((o) => ({
      index: o.index,
      name: o.name,
      size: o.size,
      data: Buffer.from(data, o.offset, o.size),
    }));
  }

  /** Decrypts, decompresses and checks a chunk object against its id. */
  async decode(name: string, id: Uint8Array, data: Buffer): Promise<Buffer> {
    const req = this.nextReq++;
    const ab = transferable(data);
    const r = await this.send(this.pick(), `req:${req}`, { type: "decode", req, name, id, data: ab }, [ab]);
    return Buffer.from((r as { plain: ArrayBuffer }).plain);
  }

  /**
   * Decodes and checks the chunks of a run of `length` bytes, placing chunk
   * `slot` at slot × chunkSize in one buffer (missing slots stay zero).
   */
  async decodeRun(
    length: number,
    chunkSize: number,
    items: { slot: number; name: string; id: Uint8Array; data: Buffer }[],
  ): Promise<Buffer> {
    const req = this.nextReq++;
    const moved = items.map((i) => ({ slot: i.slot, name: i.name, id: i.id, data: transferable(i.data) }));
    const r = await this.send(
      this.pick(),
      `req:${req}`,
      { type: "decodeRun", req, length, chunkSize, items: moved },
      moved.map((m) => m.data),
    );
    return Buffer.from((r as { plain: ArrayBuffer }).plain);
  }

  /**
   * As decodeRun, but the worker reads the chunks from their packs itself, in
   * a local repository at `root` (falling back to the trash), one read per
   * stretch of neighbouring chunks.
   */
  async readRun(
    root: string,
    length: number,
    chunkSize: number,
    items: Extract<WorkerRequest, { type: "readRun" }>["items"],
  ): Promise<Buffer> {
    const req = this.nextReq++;
    const r = await this.send(
      this.pick(),
      `req:${req}`,
      { type: "readRun", req, length, chunkSize, root, items },
      [],
    );
    return Buffer.from((r as { plain: ArrayBuffer }).plain);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** The buffer's memory as a transferable ArrayBuffer, copied only when it shares a larger one. */
export function transferable(b: Buffer): ArrayBuffer {
  const ab = b.buffer as ArrayBuffer;
  if (b.byteOffset === 0 && ab.byteLength === b.length && !(ab instanceof SharedArrayBuffer)) return ab;
  return ab.slice(b.byteOffset, b.byteOffset + b.length);
}
