/**
 * Whole blocks on the wire: prepared blocks (block-pool.ts) become BLOCKS
 * messages of consecutive blocks, at most one frame each. The scan pass
 * (scan.ts) and the shipping of dirty blocks (ship.ts) both send them so.
 */
import type { Block, BlocksMessage } from "../wire/index.js";
import type { PreparedBlock } from "./block-pool.js";

export const RUN_BLOCKS = 64; // one BLOCKS frame: 64 blocks, 4 MiB at 64 KiB
export const zeroHash = Buffer.alloc(32);

export function toWireBlock(b: PreparedBlock): Block {
  return b.encoding === "zero"
    ? { encoding: "zero", sha256: zeroHash, data: Buffer.alloc(0) }
    : { encoding: b.encoding, sha256: b.sha256, data: b.data };
}

/**
 * Turns prepared whole blocks starting at `offset` into BLOCKS messages of at
 * most one frame each (RUN_BLOCKS, or fewer when the replicator's WELCOME
 * says `maxBlocksPerFrame`).
 */
export function blocksMessages(
  disk: number,
  offset: number,
  blocks: Block[],
  blockSize: number,
  maxBlocksPerFrame: number | undefined,
): BlocksMessage[] {
  const per = Math.min(RUN_BLOCKS, maxBlocksPerFrame ?? RUN_BLOCKS);
  const out: BlocksMessage[] = [];
  for (let i = 0; i < blocks.length; i += per)
    out.push({
      type: "BLOCKS",
      disk,
      offset: offset + i * blockSize,
      kind: "blocks",
      blocks: blocks.slice(i, i + per),
    });
  return out;
}
