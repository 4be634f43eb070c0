/**
 * Worker thread for the CPU-heavy part of the data path: hashing, zero
 * detection, compression, encryption and, on the way back, decryption and
 * verification. The main thread keeps I/O and bookkeeping; one worker runs per
 * core. Messages are described in worker-pool.ts.
 */
import { createHash, createHmac } from "node:crypto";
import fs from "node:fs";
import { promisify } from "node:util";
import { parentPort, workerData } from "node:worker_threads";
import { PAGE } from "../base/aligned.js";
import { LifeboatError } from "../base/index.js";
import { CHUNK_THREAD_NAME, serveMessages } from "../base/workers.js";
import { ID_LEN } from "./block-map.js";
import { OBJECT_OVERHEAD, ObjectCodec, ObjectKind, damaged } from "./codec.js";
import zstd from "zstd-napi/binding.js";
import { stretchRange } from "./pack.js";
import { BufferPool, closeOpenPacks, readPack, readRange } from "./pack-files.js";
import {
  CHECK_BYTES,
  type CheckFailure,
  type CheckRequest,
  RUNS_PER_WORKER,
  type RestoreRunRequest,
  type RunItem,
  type WorkerRequest,
  type WorkerResponse,
  runItems,
  runStretches,
  transferable,
} from "./worker-pool.js";

const write = promisify(fs.write);

const { encryptionKey, namingKey, compressionLevel } = workerData as {
  encryptionKey: Uint8Array;
  namingKey: Uint8Array;
  compressionLevel: number;
};
const codec = new ObjectCodec(Buffer.from(encryptionKey), compressionLevel);
const nameKey = Buffer.from(namingKey);
const batches = new Map<
  number,
  { data: Buffer; chunkSize: number; ids?: Buffer; frames?: { data: Buffer; spans: number[] } }
>();
let zeros = Buffer.alloc(0);
/** Where a batch's objects are encoded before they go back in its buffer (grown to the largest batch). */
let encoded = Buffer.alloc(0);

/** An error as a "failed" reply carries it; one that is not a LifeboatError gets `code`. */
function described(err: unknown, code: string): { code: string; message: string; hint: string } {
  const e = err instanceof LifeboatError ? err : new LifeboatError(code, String(err));
  return { code: e.code, message: e.message, hint: e.hint };
}

function reply(msg: WorkerResponse, transfer: ArrayBuffer[] = []): void {
  parentPort!.postMessage(msg, transfer);
}

function chunkAt(b: { data: Buffer; chunkSize: number }, i: number): Buffer {
  return b.data.subarray(i * b.chunkSize, Math.min(b.data.length, (i + 1) * b.chunkSize));
}

/** Chunk i's zstd frame from the writer (ChunkFrames), if it has one that is a single frame of exactly `length` bytes. */
function frameOf(
  b: { frames?: { data: Buffer; spans: number[] } },
  i: number,
  length: number,
): Buffer | undefined {
  const f = b.frames;
  const start = f?.spans[2 * i] ?? -1;
  if (!f || start < 0) return undefined;
  const frame = f.data.subarray(start, start + (f.spans[2 * i + 1] ?? 0));
  try {
    if (zstd.getFrameContentSize(frame) !== length || zstd.findFrameCompressedSize(frame) !== frame.length)
      return undefined;
  } catch {
    return undefined;
  }
  return frame;
}

const dctx = new zstd.DCtx();

/** Decompresses the frames of the first `n` chunks (ChunkFrames, `inflate`) into their places in the batch. */
function inflate(
  b: { data: Buffer; chunkSize: number; frames?: { data: Buffer; spans: number[] } },
  n: number,
) {
  const f = b.frames!;
  for (let i = 0; i < n; i++) {
    const start = f.spans[2 * i] ?? -1;
    if (start < 0) continue;
    const chunk = chunkAt(b, i);
    let got: number;
    try {
      got = dctx.decompress(chunk, f.data.subarray(start, start + f.spans[2 * i + 1]!));
    } catch (err) {
      throw badFrame(i, `does not decompress into its ${chunk.length} bytes (${(err as Error).message})`);
    }
    if (got !== chunk.length) throw badFrame(i, `decompresses to ${got} bytes, not ${chunk.length}`);
  }
}

function badFrame(i: number, what: string): LifeboatError {
  return new LifeboatError("STORE_BAD_FRAME", `the compressed form of chunk ${i} of the run ${what}`, {
    hint: "the sender sent a damaged block; it resends from the last acknowledged message",
  });
}

function handle(msg: WorkerRequest): void {
  switch (msg.type) {
    case "scan": {
      const data = Buffer.from(msg.buffer, 0, msg.length);
      const batch: {
        data: Buffer;
        chunkSize: number;
        ids?: Buffer;
        frames?: { data: Buffer; spans: number[] };
      } = {
        data,
        chunkSize: msg.chunkSize,
        ...(msg.frames ? { frames: { data: Buffer.from(msg.frames.data), spans: msg.frames.spans } } : {}),
      };
      const n = Math.ceil(msg.length / msg.chunkSize);
      if (msg.frames?.inflate) {
        try {
          inflate(batch, Math.min(n, msg.frames.inflate));
        } catch (err) {
          reply({ type: "failed", req: -1 - msg.batch, ...described(err, "STORE_BAD_FRAME") });
          return;
        }
      }
      batches.set(msg.batch, batch);
      if (zeros.length < msg.chunkSize) zeros = Buffer.alloc(msg.chunkSize);
      const ids = new ArrayBuffer(n * 32);
      const view = Buffer.from(ids);
      for (let i = 0; i < n; i++) {
        const c = chunkAt(batch, i);
        if (c.equals(zeros.subarray(0, c.length))) continue; // stays all-zero: the ZERO_ID
        createHash("sha256")
          .update(c)
          .digest()
          .copy(view, i * 32);
      }
      batch.ids = Buffer.from(view); // a copy: `ids` moves to the main thread
      reply({ type: "scanned", batch: msg.batch, ids }, [ids]);
      return;
    }
    case "encode": {
      const batch = batches.get(msg.batch);
      batches.delete(msg.batch);
      if (!batch) throw new Error(`unknown batch ${msg.batch}`);
      let room = 0;
      for (const index of msg.indexes) room += chunkAt(batch, index).length + OBJECT_OVERHEAD;
      if (encoded.length < room) encoded = Buffer.allocUnsafeSlow(room);
      let at = 0;
      const objects = msg.indexes.map((index) => {
        const id = batch.ids!.subarray(index * 32, index * 32 + 32); // as this worker hashed it
        const h = createHmac("sha256", nameKey).update(id).digest("hex");
        const name = `chunks/${h.slice(0, 2)}/${h}`;
        const plain = chunkAt(batch, index);
        const frame = frameOf(batch, index, plain.length);
        const size = codec.encodeInto(name, ObjectKind.chunk, plain, encoded.subarray(at), frame);
        at += size;
        return { index, name, offset: at - size, size };
      });
      // The objects go back in the batch's own buffer when they fit (its plaintext is no longer
      // needed), so that buffer returns to the main thread for the next read: nothing is allocated
      // per batch. Otherwise one buffer for them all: one transfer, one allocation to free.
      const own = batch.data.buffer as ArrayBuffer;
      const all = at <= own.byteLength ? Buffer.from(own) : Buffer.allocUnsafeSlow(at);
      encoded.copy(all, 0, 0, at);
      const data = all.buffer;
      // The frames are copied into `data` too: their buffer goes back for the writer's next run.
      const frames = batch.frames?.data.buffer as ArrayBuffer | undefined;
      reply(
        { type: "encoded", batch: msg.batch, objects, data, ...(frames ? { frames } : {}) },
        frames ? [data, frames] : [data],
      );
      return;
    }
    case "decode": {
      if (!msg.file) {
        decodeAndReply(msg, new Uint8Array(msg.data!));
        return;
      }
      // Read without blocking the thread: the chunks a replicator reads back to patch are mostly
      // not in the page cache, and a worker that waited for each read in turn would keep one read
      // in flight where the disk serves dozens.
      const into = chunkReads.take(msg.file.length);
      readRange(msg.file, into)
        .then(
          (data) => decodeAndReply(msg, data),
          (err: unknown) => {
            const { code, message } = err as NodeJS.ErrnoException;
            reply({ type: "failed", req: msg.req, code: code ?? "EIO", message, hint: "", errno: true });
          },
        )
        .finally(() => chunkReads.give(into));
      return;
    }
    case "restoreRun": {
      void restoreRun(msg);
      return;
    }
    case "check": {
      void checkStretch(msg);
      return;
    }
  }
}

/** Checks the chunk objects of a stretch (CheckRequest) and replies with those that failed. */
async function checkStretch(msg: CheckRequest): Promise<void> {
  let stored: Buffer | undefined;
  try {
    let data: Buffer;
    if (msg.file) {
      const { root, pack, offset, length } = msg.file;
      stored = readBuffers.take(length, readTypical(CHECK_BYTES));
      try {
        data = await readPack(root, pack, offset, stored.subarray(0, length));
      } catch (err) {
        reply({ type: "failed", req: msg.req, ...described(err, "STORE_IO") });
        return;
      }
    } else data = Buffer.from(msg.data!);
    const failed: CheckFailure[] = [];
    msg.chunks.forEach((c, index) => {
      try {
        checkChunk(c.name, c.id, data.subarray(c.offset, c.offset + c.length));
      } catch (err) {
        failed.push({ index, ...described(err, "STORE_OBJECT_CORRUPT") });
      }
    });
    reply({ type: "checked", req: msg.req, failed });
  } finally {
    if (stored) readBuffers.give(stored);
  }
}

/** Where checkChunk decodes (grown to the largest chunk): a check keeps no plaintext. */
let checked = Buffer.alloc(0);

/** Decodes a chunk object into this thread's buffer and checks it against its id; throws why it is damaged. */
function checkChunk(name: string, id: Uint8Array, data: Uint8Array): void {
  let n = codec.decodeInto(name, ObjectKind.chunk, data, checked);
  if (n > checked.length) {
    checked = Buffer.allocUnsafeSlow(n);
    n = codec.decodeInto(name, ObjectKind.chunk, data, checked);
  }
  matchId(name, id, checked.subarray(0, n));
}

/** Read stretches merge across gaps up to this size: one larger read costs less than two. */
const MAX_GAP = 256 << 10;
/**
 * A run's output (its bytes as they go to the disk), and the chunk objects it
 * read: their stretches, with the gaps that reads span (MAX_GAP). A run's
 * objects mostly take up to its length and a half (compressed chunks, gaps);
 * one size for every read buffer keeps a worker from growing them one after
 * the other (in the benchmark's export, 96 MiB of fresh buffers at 4 MiB
 * steps, 60 MiB with this).
 */
const runBuffers = new BufferPool(RUNS_PER_WORKER);
/**
 * Single chunk objects read back (decode), many at once: each read into a
 * buffer of its own was, with the decoded chunk, all of a replicator's
 * workers' garbage while it patched blocks (448 MiB per worker in one
 * replication benchmark run). The decoded chunk is a new buffer: the read
 * one is free once decoded.
 */
const chunkReads = new BufferPool(64, 128 << 10);
const readBuffers = new BufferPool(RUNS_PER_WORKER, 1 << 20);
const readTypical = (runLength: number) => runLength + (runLength >> 1);

/**
 * Restores a run (worker-pool.ts, RestoreRunRequest): reads each stretch of
 * neighbouring chunk objects (or takes them from the message), decodes and
 * checks every chunk straight into its place in the run's buffer, and only
 * when all of them are good writes the run out. Buffers are reused across runs.
 */
async function restoreRun(msg: RestoreRunRequest): Promise<void> {
  const out = runBuffers.take(msg.length);
  let stored: Buffer | undefined;
  let failed: { err: unknown; slot: number } | undefined;
  const fail = (err: unknown, slot: number) => {
    if (!failed || slot < failed.slot) failed = { err, slot };
  };
  try {
    const items = runItems(new Uint8Array(msg.entries));
    const decodeInto = (it: RunItem, data: Uint8Array) => {
      try {
        const at = it.slot * msg.chunkSize;
        const want = Math.min(msg.chunkSize, msg.length - at);
        decodeChunkInto(it, data, out.subarray(at, at + want));
      } catch (err) {
        fail(err, it.slot);
      }
    };
    if (msg.root === undefined) {
      const groups = runStretches(items, 0);
      groups.forEach((group, i) => {
        const data = Buffer.from(msg.stretches![i]!);
        const first = group[0]!.offset;
        for (const it of group)
          decodeInto(it, data.subarray(it.offset - first, it.offset - first + it.length));
      });
    } else {
      const root = msg.root;
      const groups = runStretches(items, MAX_GAP).map((group) => ({ group, ...stretchRange(group) }));
      stored = readBuffers.take(
        groups.reduce((n, g) => n + g.length, 0),
        readTypical(msg.length),
      );
      let at = 0;
      await Promise.all(
        groups.map(async ({ group, offset, length }) => {
          const into = stored!.subarray(at, (at += length));
          let data: Buffer;
          try {
            data = await readPack(root, group[0]!.pack, offset, into);
          } catch (err) {
            fail(err, Math.min(...group.map((g) => g.slot)));
            return;
          }
          for (const it of group) {
            const from = it.offset - offset;
            decodeInto(it, data.subarray(from, Math.min(data.length, from + it.length)));
          }
        }),
      );
    }
    if (!failed) {
      await writeRun(msg, out, items);
      if (msg.hashCopy) copyChunks(msg, out, items, new Uint8Array(msg.hashCopy));
    }
  } catch (err) {
    fail(err, 0);
  } finally {
    if (stored) readBuffers.give(stored);
    runBuffers.give(out);
  }
  if (failed?.err instanceof TargetError) {
    const { code, message } = failed.err.cause as NodeJS.ErrnoException;
    reply({ type: "failed", req: msg.req, code: code ?? "EIO", message, hint: "", errno: true });
  } else if (failed) {
    reply({
      type: "failed",
      req: msg.req,
      ...described(failed.err, "STORE_OBJECT_CORRUPT"),
      slot: failed.slot,
    });
  } else reply({ type: "restored", req: msg.req });
}

/** The run's stored chunks into `into` at their places, one copy per stretch of consecutive chunks. */
function copyChunks(msg: RestoreRunRequest, out: Buffer, items: RunItem[], into: Uint8Array): void {
  const cs = msg.chunkSize;
  const slots = items.map((it) => it.slot).sort((a, b) => a - b);
  for (let i = 0; i < slots.length;) {
    let j = i + 1;
    while (j < slots.length && slots[j] === slots[j - 1]! + 1) j++;
    const from = slots[i]! * cs;
    const to = Math.min(msg.length, (slots[j - 1]! + 1) * cs);
    into.set(out.subarray(from, to), from);
    i = j;
  }
}

/** A write to the target failed: its error goes back as it is (ENOSPC, EIO…), not as damage. */
class TargetError extends Error {
  constructor(cause: unknown) {
    super(String(cause), { cause });
  }
}

/** Writes a decoded run: whole (zeros filled in) for a device, else each stretch of consecutive chunks. */
async function writeRun(msg: RestoreRunRequest, out: Buffer, items: RunItem[]): Promise<void> {
  const cs = msg.chunkSize;
  const spans: [number, number][] = [];
  const slots = items.map((it) => it.slot).sort((a, b) => a - b);
  for (const slot of slots) {
    const last = spans.at(-1);
    if (last && last[1] === slot * cs) last[1] = Math.min(msg.length, (slot + 1) * cs);
    else if (!last || last[1] < slot * cs) spans.push([slot * cs, Math.min(msg.length, (slot + 1) * cs)]);
  }
  if (msg.fill) {
    let at = 0;
    for (const [from, to] of spans) {
      out.fill(0, at, from);
      at = to;
    }
    out.fill(0, at, msg.length);
    spans.splice(0, spans.length, [0, msg.length]);
  }
  for (const [from, to] of spans) {
    // Page-aligned spans bypass the page cache when the target allows it: no copy, no dirty pages to flush.
    const aligned = from % PAGE === 0 && to % PAGE === 0 && msg.position % PAGE === 0;
    const fd = aligned && msg.directFd !== undefined ? msg.directFd : msg.fd;
    let done = from;
    while (done < to) {
      const { bytesWritten } = await write(fd, out, done, to - done, msg.position + done).catch(
        (err: unknown) => {
          throw new TargetError(err);
        },
      );
      done += bytesWritten;
    }
  }
}

/** Decodes a chunk object into `dest`, which must come out exactly filled with bytes that hash to the id. */
function decodeChunkInto(it: RunItem, data: Uint8Array, dest: Buffer): void {
  const id = it.entry.subarray(0, ID_LEN);
  const name = chunkName(id);
  const n = codec.decodeInto(name, ObjectKind.chunk, data, dest);
  if (n !== dest.length)
    throw damaged(
      "STORE_CHUNK_MISMATCH",
      name,
      `decrypts to ${n} bytes where its place holds ${dest.length}`,
    );
  matchId(name, id, dest);
}

/** Decodes a chunk object and replies with its bytes, or with why it is damaged. */
function decodeAndReply(msg: { req: number; name: string; id: Uint8Array }, data: Uint8Array): void {
  try {
    const plain = decodeChunk(msg.name, msg.id, data);
    const ab = transferable(plain);
    reply({ type: "decoded", req: msg.req, plain: ab }, [ab]);
  } catch (err) {
    reply({ type: "failed", req: msg.req, ...described(err, "STORE_OBJECT_CORRUPT") });
  }
}

function chunkName(id: Uint8Array): string {
  const h = createHmac("sha256", nameKey).update(id).digest("hex");
  return `chunks/${h.slice(0, 2)}/${h}`;
}

function decodeChunk(name: string, id: Uint8Array, data: Uint8Array): Buffer {
  const plain = codec.decode(name, ObjectKind.chunk, data);
  matchId(name, id, plain);
  return plain;
}

/** Throws STORE_CHUNK_MISMATCH unless `plain` hashes to `id`. */
function matchId(name: string, id: Uint8Array, plain: Uint8Array): void {
  if (!createHash("sha256").update(plain).digest().equals(id)) {
    throw damaged(
      "STORE_CHUNK_MISMATCH",
      name,
      `decrypts but does not match its id ${Buffer.from(id).toString("hex")}`,
    );
  }
}

serveMessages<WorkerRequest>(handle, CHUNK_THREAD_NAME);
parentPort!.once("close", closeOpenPacks);
