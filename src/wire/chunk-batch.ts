import { compress, decompress } from "zstd-napi";
import { LifeboatError } from "../base/index.js";

/**
 * Whole chunks of a disk with their indexes, as the control plane sends them
 * to a failback target: a JSON header (where the next batch starts, and
 * anything else the request needs to say) and one record per chunk, zstd
 * compressed unless that does not make it smaller, or marked all-zero.
 *
 *   "LBCB" | u32 header length | header JSON | records
 *   record: u32 chunk index | u8 encoding (0 zero, 1 zstd, 2 raw) | u32 length | bytes
 */
const MAGIC = Buffer.from("LBCB");

export interface BatchChunk {
  index: number;
  /** The chunk's plain bytes (a zero chunk may be given as an empty buffer with `zero`). */
  data: Buffer;
  zero?: boolean;
}

export function encodeChunkBatch(header: Record<string, unknown>, chunks: readonly BatchChunk[]): Buffer {
  const head = Buffer.from(JSON.stringify(header));
  const parts: Buffer[] = [MAGIC, u32(head.length), head];
  for (const c of chunks) {
    const zero = c.zero === true || c.data.every((b) => b === 0);
    let enc = 0;
    let body: Buffer = Buffer.alloc(0);
    if (!zero) {
      const z = compress(c.data);
      [enc, body] = z.length < c.data.length ? [1, z] : [2, c.data];
    }
    const rec = Buffer.alloc(9);
    rec.writeUInt32BE(c.index, 0);
    rec.writeUInt8(enc, 4);
    rec.writeUInt32BE(body.length, 5);
    parts.push(rec, body);
  }
  return Buffer.concat(parts);
}

export function decodeChunkBatch<H>(
  buf: Buffer,
  chunkSize: number,
): { header: H; chunks: { index: number; data: Buffer }[] } {
  const bad = (why: string) =>
    new LifeboatError("FAILBACK_BAD_BATCH", `a chunk batch is malformed: ${why}`, {
      hint: "the control plane and agent disagree on the format; upgrade both to one release",
      retryable: true,
    });
  if (buf.length < 8 || !buf.subarray(0, 4).equals(MAGIC)) throw bad("no header");
  const hl = buf.readUInt32BE(4);
  if (8 + hl > buf.length) throw bad("header longer than the batch");
  const header = JSON.parse(buf.subarray(8, 8 + hl).toString("utf8")) as H;
  const chunks: { index: number; data: Buffer }[] = [];
  let at = 8 + hl;
  while (at < buf.length) {
    if (at + 9 > buf.length) throw bad("a record is cut short");
    const index = buf.readUInt32BE(at);
    const enc = buf.readUInt8(at + 4);
    const len = buf.readUInt32BE(at + 5);
    at += 9;
    if (at + len > buf.length) throw bad("a record is cut short");
    const body = buf.subarray(at, at + len);
    at += len;
    let data: Buffer;
    if (enc === 0) data = Buffer.alloc(chunkSize);
    else if (enc === 1) data = decompress(body);
    else if (enc === 2) data = Buffer.from(body);
    else throw bad(`unknown encoding ${enc}`);
    if (data.length > chunkSize) throw bad(`chunk ${index} has ${data.length} bytes, more than ${chunkSize}`);
    chunks.push({ index, data });
  }
  return { header, chunks };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}
