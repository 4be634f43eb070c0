/**
 * Worker thread for the CPU-heavy part of the data path: hashing, zero
 * detection, compression, encryption and, on the way back, decryption and
 * verification. The main thread keeps I/O and bookkeeping; one worker runs per
 * core. Messages are described in worker-pool.ts.
 */
import { createHash, createHmac } from "node:crypto";
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
        const data = codec.encode(name, ObjectKind.chunk, chunkAt(batch, index));
        return { index, name, data: transferable(data) };
      });
      reply(
        { type: "encoded", batch: msg.batch, objects },
        objects.map((o) => o.data),
      );
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
    case "decodeRun": {
      try {
        const out = Buffer.alloc(msg.length);
        for (const it of msg.items) {
          try {
            decodeChunk(it.name, it.id, it.data).copy(out, it.slot * msg.chunkSize);
          } catch (err) {
            const e =
              err instanceof LifeboatError ? err : new LifeboatError("STORE_OBJECT_CORRUPT", String(err));
            reply({
              type: "failed",
              req: msg.req,
              code: e.code,
              message: e.message,
              hint: e.hint,
              slot: it.slot,
            });
            return;
          }
        }
        const ab = transferable(out);
        reply({ type: "decoded", req: msg.req, plain: ab }, [ab]);
      } catch (err) {
        reply({ type: "failed", req: msg.req, code: "INTERNAL", message: String(err), hint: "" });
      }
      return;
    }
  }
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
