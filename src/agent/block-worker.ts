/**
 * Worker thread of the agent's block pool: for a run of blocks read from a
 * disk, finds the all-zero ones, hashes the rest (SHA-256) and compresses
 * them (zstd) when that makes them smaller. Messages: block-pool.ts.
 */
import { createHash } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import zstd from "zstd-napi/binding.js";
import { SlabTable } from "../base/slabs.js";
import { BLOCK_THREAD_NAME, serveMessages } from "../base/workers.js";
import type { BlockJob, BlockJobResult } from "./block-pool.js";

const { level } = workerData as { level: number };
const cctx = level > 0 ? new zstd.CCtx() : null;
let zeros = Buffer.alloc(0);
const slabs = new SlabTable();

serveMessages<BlockJob>((job) => {
  const slab = slabs.open(job);
  const data = slab.subarray(0, job.length);
  const n = Math.ceil(job.length / job.blockSize);
  if (zeros.length < job.blockSize) zeros = Buffer.alloc(job.blockSize);
  const hashes = Buffer.alloc(n * 32);
  const kinds = new Uint8Array(n);
  const lengths = new Uint32Array(n);
  const bound = zstd.compressBound(job.blockSize);
  // Frames go into the slab after the run, one after another (the pool made room for n bounds).
  let framed = job.framesAt;
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
    if (job.compress && cctx) {
      // A zstd frame that declares its content size (the replicator checks it against the block's).
      const z = cctx.compress(slab.subarray(framed, framed + bound), block, level);
      if (z < block.length - (block.length >>> 4)) {
        kinds[i] = 2;
        lengths[i] = z;
        framed += z;
        continue;
      }
    }
    kinds[i] = 1;
  }
  const out: BlockJobResult = {
    id: job.id,
    hashes: hashes.buffer,
    kinds: kinds.buffer,
    lengths: lengths.buffer,
  };
  parentPort!.postMessage(out, [out.hashes, out.kinds, out.lengths]);
}, BLOCK_THREAD_NAME);
