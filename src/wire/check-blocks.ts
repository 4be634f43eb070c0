import { protocolError } from "./errors.js";
import type { BlocksMessage, DiskInfo } from "./messages.js";

/**
 * Checks a BLOCKS message against the disks the agent declared in HELLO: the
 * disk exists, the offset is block-aligned, every block lies inside the disk,
 * raw data is exactly the block (shorter only for a disk's last, partial
 * block), compressed data is no larger than the block plus zstd's framing,
 * and patches stay inside their block. Throws a WIRE_PROTOCOL error.
 */
export function checkBlocks(msg: BlocksMessage, disks: readonly DiskInfo[]): void {
  const disk = disks.find((d) => d.index === msg.disk);
  if (!disk) throw protocolError(`BLOCKS for disk ${msg.disk}, which HELLO did not declare`);
  const { blockSize, sizeBytes } = disk;
  if (msg.offset % blockSize !== 0) {
    throw protocolError(
      `BLOCKS offset ${msg.offset} on disk ${msg.disk} is not a multiple of its block size ${blockSize}`,
    );
  }
  const count = msg.kind === "blocks" ? msg.blocks.length : 1;
  if (msg.offset + (count - 1) * blockSize >= sizeBytes) {
    throw protocolError(
      `BLOCKS at ${msg.offset} (${count} blocks of ${blockSize}) runs past the end of disk ${msg.disk} (${sizeBytes} bytes)`,
    );
  }
  if (msg.kind === "blocks") {
    msg.blocks.forEach((b, i) => {
      const start = msg.offset + i * blockSize;
      const expected = Math.min(blockSize, sizeBytes - start);
      if (b.encoding === "raw" && b.data.length !== expected) {
        throw protocolError(
          `BLOCKS raw block at ${start} on disk ${msg.disk} has ${b.data.length} bytes, not ${expected}`,
        );
      }
      if (b.encoding === "zstd" && b.data.length > zstdBound(expected)) {
        throw protocolError(
          `BLOCKS compressed block at ${start} on disk ${msg.disk} is larger than any zstd frame of it`,
        );
      }
    });
  } else {
    const end = Math.min(blockSize, sizeBytes - msg.offset);
    const last = msg.patches[msg.patches.length - 1];
    if (last && last.at + last.data.length > end) {
      throw protocolError(`BLOCKS patch at ${msg.offset + last.at} on disk ${msg.disk} runs past its block`);
    }
  }
}

/** ZSTD_compressBound: the largest frame zstd makes from n bytes. */
function zstdBound(n: number): number {
  return n + (n >> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >> 11 : 0) + 64;
}
