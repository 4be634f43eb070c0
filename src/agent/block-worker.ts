/**
 * Worker thread of the agent's block pool: for a run of blocks read from a
 * disk, finds the all-zero ones, hashes the rest (SHA-256) and compresses
 * them (zstd) when that makes them smaller. Messages: block-pool.ts.
 */
import { createHash } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import { Compressor } from "zstd-napi";
import { serveMessages } from "../base/workers.js";
import type { BlockJob, BlockJobResult } from "./block-pool.js";

const { level } = workerData as { level: number };
const compressor = level > 0 ? new Compressor() : null;
compressor?.setParameters({ compressionLevel: level });
let zeros = Buffer.alloc(0);

serveMessages<BlockJob>((job) => {
  const data = Buffer.from(job.buffer, 0, job.length);
  const n = Math.ceil(job.length / job.blockSize);
  if (zeros.length < job.blockSize) zeros = Buffer.alloc(job.blockSize);
  const hashes = Buffer.alloc(n * 32);
  const kinds = new Uint8Array(n);
  const frames: Buffer[] = [];
  const lengths = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const block = data.subarray(i * job.blockSize, Math.min(job.length, (i + 1) * job.blockSize));
    if (block.equals(zeros.subarray(0, block.length))) {
      kinds[i] = 0;
      continue;
    }
    createHash("sha256")
      .update(block)
      .digest()
      .copy(hashes, i * 32);
    if (job.compress && compressor) {
      const z = compressor.compress(block);
      if (z.length < block.length - (block.length >>> 4)) {
        kinds[i] = 2;
        frames.push(z);
        lengths[i] = z.length;
        continue;
      }
    }
    kinds[i] = 1;
  }
  const packed = Buffer.concat(frames);
  const out: BlockJobResult = {
    id: job.id,
    buffer: job.buffer,
    hashes: hashes.buffer,
    kinds: kinds.buffer,
    frames: packed.buffer,
    framesOffset: packed.byteOffset,
    lengths: lengths.buffer,
  };
  // The frames move too when their buffer is theirs alone (a small one may share Node's pool).
  const ownFrames = packed.byteOffset === 0 && packed.buffer.byteLength === packed.length;
  const transfer = [job.buffer, out.hashes, out.kinds, out.lengths];
  parentPort!.postMessage(out, ownFrames ? [...transfer, packed.buffer] : transfer);
});
