/**
 * Worker thread for the CPU-heavy part of the data path: hashing, zero
 * detection, compression, encryption and, on the way back, decryption and
 * verification. The main thread keeps I/O and bookkeeping; one worker runs per
 * core. Messages are described in worker-pool.ts.
 */
import { createHash, createHmac } from "node:crypto";
import { open } from "node:fs/promises";
import path from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import { LifeboatError } from "../base/index.js";
import { ObjectCodec, ObjectKind, damaged } from "./codec.js";
import { packStretches } from "./pack.js";
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
      // One buffer for the batch: one transfer, and one allocation for the main thread to free.
      const all = Buffer.allocUnsafeSlow(objects.reduce((n, o) => n + o.data.length, 0));
      let at = 0;
      const placed = objects.map((o) => {
        o.data.copy(all, at);
        at += o.data.length;
        return { index: o.index, name: o.name, offset: at - o.data.length, size: o.data.length };
      });
      const data = all.buffer;
      reply({ type: "encoded", batch: msg.batch, objects: placed, data }, [data]);
      return;
    }
    case "decode": {
      try {
        const plain = decodeChunk(msg.name, msg.id, new Uint8Array(msg.data));
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

/**
 * Decodes a run of chunks into one buffer. With a local root the worker reads
 * the packs itself — one read for each stretch of chunks that lie next to
 * each other in a pack, as a sequential import leaves them — so the main
 * thread never handles the stored bytes.
 */
async function decodeRun(msg: Extract<WorkerRequest, { type: "decodeRun" | "readRun" }>): Promise<void> {
  const out = Buffer.alloc(msg.length);
  let failed: { err: unknown; slot: number } | undefined;
  const fail = (err: unknown, slot: number) => {
    if (!failed || slot < failed.slot) failed = { err, slot };
  };
  const decodeInto = (it: { slot: number; name: string; id: Uint8Array }, data: Uint8Array) => {
    try {
      decodeChunk(it.name, it.id, data).copy(out, it.slot * msg.chunkSize);
    } catch (err) {
      fail(err, it.slot);
    }
  };
  if (msg.type === "decodeRun") {
    for (const it of msg.items) decodeInto(it, new Uint8Array(it.data));
  } else {
    await Promise.all(
      packStretches(msg.items).map(async (group) => {
        const first = group[0]!;
        const last = group[group.length - 1]!;
        let data: Buffer;
        try {
          data = await readRange(
            msg.root,
            first.pack,
            first.offset,
            last.offset + last.length - first.offset,
          );
        } catch (err) {
          fail(err, first.slot);
          return;
        }
        for (const it of group) {
          const at = it.offset - first.offset;
          decodeInto(it, data.subarray(at, Math.min(data.length, at + it.length)));
        }
      }),
    );
  }
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

/** Bytes of a pack in a local repository, or of its copy in the trash (see gc.ts). */
async function readRange(root: string, name: string, offset: number, length: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path.join(root, name), "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new LifeboatError("STORE_IO", `reading ${name}: ${String(err)}`);
    try {
      fh = await open(path.join(root, "trash", name), "r");
    } catch {
      throw new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing from ${root}`, {
        hint: "run `lifeboat store verify` to see which PITs are affected",
      });
    }
  }
  try {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) break; // a truncated pack: the chunks past its end fail to decode
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

function decodeChunk(name: string, id: Uint8Array, data: Uint8Array): Buffer {
  const plain = codec.decode(name, ObjectKind.chunk, data);
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
