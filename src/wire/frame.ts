import { crc32 } from "node:zlib";

/**
 * Frame layout (all integers big-endian), 24-byte header then the payload:
 *
 *   0  u16  magic 0x4C57 ("LW")
 *   2  u8   frame format version (FRAME_FORMAT = 1)
 *   3  u8   type (FrameType)
 *   4  u16  flags (only FLAG_RESENT is defined; other bits must be 0)
 *   6  u16  reserved, 0
 *   8  u64  sequence number: 1, 2, ... on sequenced types, 0 on the others
 *  16  u32  payload length
 *  20  u32  CRC-32 (IEEE, zlib's) of the payload followed by header bytes 0..19
 *
 * Why CRC-32 and not a truncated SHA-256: TLS already authenticates every
 * byte against tampering and line noise, and each block in a BLOCKS frame
 * carries its own SHA-256 end to end. The frame checksum is there to catch
 * our own faults (a framing slip, a reused buffer, memory corruption) before a
 * frame is acted on; CRC-32 detects every burst under 32 bits and any random
 * damage with probability 1 - 2^-32 at several GB/s, where SHA-256 would spend
 * as much CPU as the block hashes themselves. The payload comes first so its
 * CRC can be computed once and a resent frame (new sequence number, new flags)
 * only re-checksums its header.
 */
export const FRAME_MAGIC = 0x4c57;
export const FRAME_FORMAT = 1;
export const HEADER_BYTES = 24;
export const FLAG_RESENT = 0x0001;
const KNOWN_FLAGS = FLAG_RESENT;

export const FrameType = {
  HELLO: 1,
  WELCOME: 2,
  BLOCKS: 3,
  HAVE_QUERY: 4,
  HAVE: 5,
  ACK: 6,
  POINT: 7,
  POINT_DONE: 8,
  PING: 9,
  PONG: 10,
  COMMAND: 11,
  ERROR: 12,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Types that carry a sequence number and are applied exactly once, in order. */
export const SEQUENCED: ReadonlySet<number> = new Set([FrameType.BLOCKS, FrameType.POINT]);

const KiB = 1024;
const MiB = 1024 * KiB;

/** Largest block a disk may declare, and most blocks in one BLOCKS frame. */
export const MAX_BLOCK_SIZE = 1 * MiB;
export const MAX_BLOCKS_PER_FRAME = 64;
/** Hashes in one HAVE_QUERY, and HAVE_QUERYs a connection may have unanswered. */
export const MAX_HAVE_HASHES = 1024;
export const MAX_PENDING_QUERIES = 64;

/**
 * Hard payload limit per frame type. The decoder refuses a header announcing
 * more before reading any of the payload, so a peer can never make the other
 * side buffer more than one maximal frame. BLOCKS: up to 4 MiB of block data
 * (64 blocks of 64 KiB, or 4 blocks of 1 MiB) plus per-block headers.
 */
export const MAX_PAYLOAD: Readonly<Record<FrameType, number>> = {
  [FrameType.HELLO]: 64 * KiB,
  [FrameType.WELCOME]: 64 * KiB,
  [FrameType.BLOCKS]: 4 * MiB + 64 * KiB,
  [FrameType.HAVE_QUERY]: 8 + MAX_HAVE_HASHES * 32,
  [FrameType.HAVE]: 8 + MAX_HAVE_HASHES / 8,
  [FrameType.ACK]: 8,
  [FrameType.POINT]: 64 * KiB,
  [FrameType.POINT_DONE]: 4 * KiB,
  [FrameType.PING]: 8,
  [FrameType.PONG]: 8,
  [FrameType.COMMAND]: 16 * KiB,
  [FrameType.ERROR]: 16 * KiB,
};

export const MAX_FRAME_BYTES = HEADER_BYTES + Math.max(...Object.values(MAX_PAYLOAD));

export function isFrameType(n: number): n is FrameType {
  return n >= FrameType.HELLO && n <= FrameType.ERROR;
}

export function frameTypeName(type: number): string {
  const name = Object.entries(FrameType).find(([, v]) => v === type)?.[0];
  return name ?? `type ${type}`;
}

export interface Frame {
  type: FrameType;
  flags: number;
  /** 0 on types that are not sequenced. */
  seq: number;
  payload: Buffer;
}

export function flagsAreKnown(flags: number): boolean {
  return (flags & ~KNOWN_FLAGS) === 0;
}

/** CRC of a payload, the part of a frame's checksum that does not change on resend. */
export function payloadCrc(payload: Uint8Array): number {
  return crc32(payload);
}

/**
 * The 24-byte header for a payload whose CRC is `crc` (payloadCrc). The
 * payload is written after it unchanged; callers write the two with writev or
 * a cork so large payloads are never copied.
 */
export function encodeHeader(
  type: FrameType,
  seq: number,
  flags: number,
  payloadLength: number,
  crc: number,
  into: Buffer = Buffer.allocUnsafe(HEADER_BYTES),
): Buffer {
  const h = into.subarray(0, HEADER_BYTES);
  h.writeUInt16BE(FRAME_MAGIC, 0);
  h.writeUInt8(FRAME_FORMAT, 2);
  h.writeUInt8(type, 3);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(0, 6);
  h.writeBigUInt64BE(BigInt(seq), 8);
  h.writeUInt32BE(payloadLength, 16);
  h.writeUInt32BE(crc32(h.subarray(0, 20), crc), 20);
  return h;
}

/** A whole frame in one buffer (tests and small frames). */
export function encodeFrame(frame: Frame): Buffer {
  const header = encodeHeader(
    frame.type,
    frame.seq,
    frame.flags,
    frame.payload.length,
    payloadCrc(frame.payload),
  );
  return Buffer.concat([header, frame.payload]);
}
