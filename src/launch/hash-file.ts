import { createHash } from "node:crypto";
import { constants, promises as fs } from "node:fs";
import { PAGE, alignedBuffer } from "../base/aligned.js";
import { LifeboatError } from "../base/index.js";

/** Bytes per read, and reads kept in flight ahead of the hash. */
const PIECE = 8 << 20;
const AHEAD = 3;

/**
 * SHA-256 of the first `size` bytes of a file or device, read in large
 * pieces with the next reads already under way while one is hashed, so the
 * time is that of the slower of reading and hashing, not their sum. Reads
 * of whole pages use O_DIRECT where the file allows it: no page cache to
 * fill (and evict) for a disk read once, holes come back as zeros without
 * touching the disk. Fails
 * with LAUNCH_IMAGE_SHORT when the file ends before `size`.
 */
export async function hashPrefix(file: string, size: number, signal?: AbortSignal): Promise<string> {
  const h = createHash("sha256");
  if (size <= 0) return h.digest("hex");
  const fh = await fs.open(file, "r");
  const direct = await fs.open(file, constants.O_RDONLY | constants.O_DIRECT).catch(() => undefined);
  const pieces = Math.ceil(size / PIECE);
  const buffers = Array.from({ length: Math.min(AHEAD, pieces) }, () =>
    alignedBuffer(Math.ceil(Math.min(PIECE, size) / PAGE) * PAGE),
  );
  const reads: Promise<Buffer>[] = [];
  const start = (i: number) => {
    const p = readPiece(i);
    p.catch(() => undefined); // awaited in order below, or settled in `finally`
    reads.push(p);
  };
  const readPiece = async (i: number): Promise<Buffer> => {
    const buf = buffers[i % buffers.length]!;
    const position = i * PIECE;
    const length = Math.min(PIECE, size - position);
    let got = 0;
    while (got < length) {
      const whole = (position + got) % PAGE === 0 && (length - got) % PAGE === 0;
      const { bytesRead } = await (whole && direct ? direct : fh).read(
        buf,
        got,
        length - got,
        position + got,
      );
      if (bytesRead === 0)
        throw new LifeboatError(
          "LAUNCH_IMAGE_SHORT",
          `${file} ends at byte ${position + got}, before the ${size} bytes of its disk`,
          { hint: "the image was truncated after it was written; launch again to write it anew" },
        );
      got += bytesRead;
    }
    return buf.subarray(0, length);
  };
  try {
    for (let i = 0; i < buffers.length; i++) start(i);
    for (let i = 0; i < pieces; i++) {
      const piece = await reads[i]!;
      signal?.throwIfAborted();
      h.update(piece);
      // This piece's buffer is free again: read the piece that reuses it.
      if (i + buffers.length < pieces) start(i + buffers.length);
    }
    return h.digest("hex");
  } finally {
    await Promise.allSettled(reads);
    await direct?.close();
    await fh.close();
  }
}
