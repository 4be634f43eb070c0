/**
 * Worker thread for the CPU-heavy part of the data path: hashing, zero
 * detection, compression, encryption and, on the way back, decryption and
 * verification. The main thread keeps I/O and bookkeeping; one worker runs per
 * core. Messages are described in worker-pool.ts.
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import { LifeboatError } from "../base/index.js";
import { ObjectCodec, ObjectKind, damaged } from "./codec.js";
import { type WorkerRequest, type WorkerResponse, transferable } from "./worker-pool.js";

const { encryptionKey, namingKey, compressionLevel } = workerData as {
  encryptionKey: Uint8Array;
  namingKey: Uint8Array;
  compressionLevel: number;
};
const codec = new ObjectCodec(Buffer.from(encryptionKey), compressionLevel);
const nameKey = Buffer.from(namingKey);
const batches = new Map<number, { data: Buffer; chunkSize: number }>();
let zeros = Buffer.alloc(0);

function reply(msg: WorkerResponse, transfer: ArrayBuffer[] = []): void {
  parentPort!.postMessage(msg, transfer);
}

function chunkAt(b: { data: Buffer; chunkSize: number }, i: number): Buffer {
  return b.data.subarray(i * b.chunkSize, Math.min(b.data.length, (i + 1) * b.chunkSize));
}

function handle(msg: WorkerRequest): void {
  switch (msg.type) {
    case "scan": {
      const data = Buffer.from(msg.buffer, 0, msg.length);
      const batch = { data, chunkSize: msg.chunkSize };
      batches.set(msg.batch, batch);
      if (zeros.length < msg.chunkSize) zeros = Buffer.alloc(msg.chunkSize);
      const n = Math.ceil(msg.length / msg.chunkSize);
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
      reply({ type: "scanned", batch: msg.batch, ids }, [ids]);
      return;
    }
    case "encode": {
      const batch = batches.get(msg.batch);
      batches.delete(msg.batch);
      if (!batch) throw new Error(`unknown batch ${msg.batch}`);
      const objects = msg.chunks.map(({ index, id }) => {
        const h = createHmac("sha256", nameKey).update(Buffer.from(id)).digest("hex");
        const name = `chunks/${h.slice(0, 2)}/${h}`;
        return { index, name, data: codec.encode(name, ObjectKind.chunk, chunkAt(batch, index)) };
      });
      if (msg.root) void storeLocally(msg.batch, msg.root, objects);
      else {
        const moved = objects.map((o) => ({
          index: o.index,
          name: o.name,
          size: o.data.length,
          data: transferable(o.data),
        }));
        reply(
          { type: "encoded", batch: msg.batch, objects: moved },
          moved.map((o) => o.data),
        );
      }
      return;
    }
    case "decode": {
      try {
        const plain = decodeChunk(msg.name, msg.id, msg.data);
        const ab = transferable(plain);
        reply({ type: "decoded", req: msg.req, plain: ab }, [ab]);
      } catch (err) {
        const e = err instanceof LifeboatError ? err : new LifeboatError("STORE_OBJECT_CORRUPT", String(err));
        reply({ type: "failed", req: msg.req, code: e.code, message: e.message, hint: e.hint });
      }
      return;
    }
    case "decodeRun":
    case "readRun": {
      void decodeRun(msg);
      return;
    }
  }
}

const madeDirs = new Set<string>();

/**
 * Writes encoded chunks straight into a local repository with the local
 * backend's protocol (a temporary file under tmp/, renamed into place; the
 * writer flushes before its PIT), so the main thread never handles them.
 */
async function storeLocally(
  batch: number,
  root: string,
  objects: { index: number; name: string; data: Buffer }[],
) {
  try {
    await Promise.all(
      objects.map(async (o) => {
        const dir = path.join(root, path.dirname(o.name));
        if (!madeDirs.has(dir)) {
          await mkdir(dir, { recursive: true });
          await mkdir(path.join(root, "tmp"), { recursive: true });
          madeDirs.add(dir);
        }
        const tmp = path.join(root, "tmp", `${randomBytes(8).toString("hex")}.tmp`);
        await writeFile(tmp, o.data, { mode: 0o640, flag: "wx" });
        await rename(tmp, path.join(root, o.name));
      }),
    );
    reply({
      type: "encoded",
      batch,
      objects: objects.map((o) => ({ index: o.index, name: o.name, size: o.data.length })),
    });
  } catch (err) {
    reply({
      type: "failed",
      req: -1 - batch,
      code: "STORE_IO",
      message: `writing chunks: ${String(err)}`,
      hint: "check the repository's disk",
    });
  }
}

/**
 * Decodes a run of chunks into one buffer. With a local root the worker reads
 * the chunk files itself, all of a run at once, so many reads are in flight
 * on a cold cache without the main thread touching each file.
 */
async function decodeRun(msg: Extract<WorkerRequest, { type: "decodeRun" | "readRun" }>): Promise<void> {
  const out = Buffer.alloc(msg.length);
  let failed: { err: unknown; slot: number } | undefined;
  await Promise.all(
    msg.items.map(async (it) => {
      try {
        const data = "data" in it ? it.data : await readObject((msg as { root: string }).root, it.name);
        decodeChunk(it.name, it.id, data).copy(out, it.slot * msg.chunkSize);
      } catch (err) {
        if (!failed || it.slot < failed.slot) failed = { err, slot: it.slot };
      }
    }),
  );
  if (failed) {
    const e =
      failed.err instanceof LifeboatError
        ? failed.err
        : new LifeboatError("STORE_OBJECT_CORRUPT", String(failed.err));
    reply({
      type: "failed",
      req: msg.req,
      code: e.code,
      message: e.message,
      hint: e.hint,
      slot: failed.slot,
    });
    return;
  }
  const ab = transferable(out);
  reply({ type: "decoded", req: msg.req, plain: ab }, [ab]);
}

/** A chunk object's bytes from a local repository, or from its trash (see gc.ts). */
async function readObject(root: string, name: string): Promise<ArrayBuffer> {
  let b: Buffer;
  try {
    b = await readFile(path.join(root, name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new LifeboatError("STORE_IO", `reading ${name}: ${String(err)}`);
    try {
      b = await readFile(path.join(root, "trash", name));
    } catch {
      throw new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing from ${root}`, {
        hint: "run `lifeboat store verify` to see which PITs are affected",
      });
    }
  }
  return transferable(b);
}

function decodeChunk(name: string, id: Uint8Array, data: ArrayBuffer): Buffer {
  const plain = codec.decode(name, ObjectKind.chunk, new Uint8Array(data));
  const got = createHash("sha256").update(plain).digest();
  if (!got.equals(Buffer.from(id))) {
    throw damaged(
      "STORE_CHUNK_MISMATCH",
      name,
      `decrypts but does not match its id ${Buffer.from(id).toString("hex")}`,
    );
  }
  return plain;
}

parentPort!.on("message", (msg: WorkerRequest) => handle(msg));
