import type { z } from "zod";
import { protocolError } from "./errors.js";
import {
  FrameType,
  MAX_BLOCKS_PER_FRAME,
  MAX_BLOCK_SIZE,
  MAX_HAVE_HASHES,
  MAX_PAYLOAD,
  frameTypeName,
} from "./frame.js";
import {
  type Block,
  type BlockEncoding,
  type BlocksMessage,
  type Patch,
  type WireMessage,
  commandSchema,
  errorSchema,
  helloSchema,
  pointDoneSchema,
  pointSchema,
  welcomeSchema,
} from "./messages.js";

/**
 * Payload encodings (binary ones big-endian):
 *
 * BLOCKS   u8 disk · u64 offset · u8 kind, then
 *          kind 0 (blocks): u16 n · n × (u8 encoding · 32 B sha256 · u32 length · data)
 *          kind 1 (patch):  32 B sha256 of the patched block · u16 n · n × (u32 at · u32 length · data)
 *          encodings: 0 raw, 1 zstd, 2 ref, 3 zero
 * HAVE_QUERY u32 id · u16 n · n × 32 B sha256
 * HAVE     u32 id · u16 n · ceil(n/8) B bitmap, bit i (MSB first) = holds hash i
 * ACK      u64 seq
 * PING, PONG u64 nonce
 * others   UTF-8 JSON object, checked against its schema (messages.ts)
 *
 * decodeMessage checks everything that can be checked without the session's
 * context (counts, lengths, sortedness, schema); alignment against a disk's
 * block size and size is checked by checkBlocks() once HELLO is known.
 */

const ENCODINGS: readonly BlockEncoding[] = ["raw", "zstd", "ref", "zero"];
const JSON_TYPES = {
  HELLO: [FrameType.HELLO, helloSchema],
  WELCOME: [FrameType.WELCOME, welcomeSchema],
  POINT: [FrameType.POINT, pointSchema],
  POINT_DONE: [FrameType.POINT_DONE, pointDoneSchema],
  COMMAND: [FrameType.COMMAND, commandSchema],
  ERROR: [FrameType.ERROR, errorSchema],
} as const;

export interface EncodedMessage {
  type: FrameType;
  payload: Buffer;
}

/**
 * A message's frame type and payload. `alloc`, when given, supplies the
 * buffer of a BLOCKS payload (the sender lends them from a pool: payloads
 * are kept until acknowledged, and a new buffer for each would outlive V8's
 * young generation and cost full collections); other types allocate.
 */
export function encodeMessage(msg: WireMessage, alloc?: (size: number) => Buffer): EncodedMessage {
  switch (msg.type) {
    case "BLOCKS":
      return { type: FrameType.BLOCKS, payload: encodeBlocks(msg, alloc) };
    case "HAVE_QUERY": {
      const b = Buffer.allocUnsafe(6 + 32 * msg.hashes.length);
      b.writeUInt32BE(msg.id, 0);
      b.writeUInt16BE(msg.hashes.length, 4);
      msg.hashes.forEach((h, i) => checkHash(h).copy(b, 6 + 32 * i));
      return { type: FrameType.HAVE_QUERY, payload: b };
    }
    case "HAVE": {
      const b = Buffer.alloc(6 + Math.ceil(msg.have.length / 8));
      b.writeUInt32BE(msg.id, 0);
      b.writeUInt16BE(msg.have.length, 4);
      msg.have.forEach((yes, i) => {
        if (yes) b[6 + (i >> 3)]! |= 0x80 >> (i & 7);
      });
      return { type: FrameType.HAVE, payload: b };
    }
    case "ACK":
      return { type: FrameType.ACK, payload: u64(msg.seq) };
    case "PING":
      return { type: FrameType.PING, payload: u64(msg.nonce) };
    case "PONG":
      return { type: FrameType.PONG, payload: u64(msg.nonce) };
    default: {
      const [type, schema] = JSON_TYPES[msg.type];
      const { type: _drop, ...body } = msg;
      // Validate on the way out too: a bad message is this side's bug, not the peer's problem.
      const parsed = (schema as z.ZodType).safeParse(body);
      if (!parsed.success) throw new TypeError(`invalid ${msg.type} message: ${parsed.error.message}`);
      return { type, payload: Buffer.from(JSON.stringify(body), "utf8") };
    }
  }
}

export function decodeMessage(type: FrameType, payload: Buffer): WireMessage {
  if (payload.length > MAX_PAYLOAD[type]) throw protocolError(`${frameTypeName(type)} payload is too large`);
  const r = new Reader(payload, frameTypeName(type));
  let msg: WireMessage;
  switch (type) {
    case FrameType.BLOCKS:
      msg = decodeBlocks(r);
      break;
    case FrameType.HAVE_QUERY: {
      const id = r.u32();
      const n = r.u16();
      if (n === 0 || n > MAX_HAVE_HASHES)
        throw protocolError(`HAVE_QUERY with ${n} hashes (1 to ${MAX_HAVE_HASHES})`);
      const hashes = Array.from({ length: n }, () => r.bytes(32));
      msg = { type: "HAVE_QUERY", id, hashes };
      break;
    }
    case FrameType.HAVE: {
      const id = r.u32();
      const n = r.u16();
      if (n > MAX_HAVE_HASHES) throw protocolError(`HAVE with ${n} answers`);
      const bits = r.bytes(Math.ceil(n / 8));
      const have = Array.from({ length: n }, (_, i) => (bits[i >> 3]! & (0x80 >> (i & 7))) !== 0);
      msg = { type: "HAVE", id, have };
      break;
    }
    case FrameType.ACK:
      msg = { type: "ACK", seq: r.u64() };
      break;
    case FrameType.PING:
      msg = { type: "PING", nonce: r.u64() };
      break;
    case FrameType.PONG:
      msg = { type: "PONG", nonce: r.u64() };
      break;
    default:
      return decodeJson(type, payload);
  }
  r.end();
  return msg;
}

function decodeJson(type: FrameType, payload: Buffer): WireMessage {
  const name = frameTypeName(type) as keyof typeof JSON_TYPES;
  const schema = JSON_TYPES[name][1] as z.ZodType;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch (err) {
    throw protocolError(`${name} payload is not UTF-8 JSON`, err);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw protocolError(`${name} payload is not a JSON object`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw protocolError(
      `${name} message is invalid at ${first?.path.join(".") || "top"}: ${first?.message ?? "?"}`,
    );
  }
  return { ...(parsed.data as object), type: name } as WireMessage;
}

/** A BLOCKS payload written straight into one buffer (`alloc`'s, or a new one). */
function encodeBlocks(
  msg: BlocksMessage,
  alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
): Buffer {
  const parts: readonly { data: Buffer }[] = msg.kind === "blocks" ? msg.blocks : msg.patches;
  const perPart = msg.kind === "blocks" ? 37 : 8;
  let size = 10 + (msg.kind === "blocks" ? 2 : 34);
  for (const p of parts) size += perPart + p.data.length;
  const b = alloc(size);
  b.writeUInt8(msg.disk, 0);
  b.writeBigUInt64BE(BigInt(msg.offset), 1);
  b.writeUInt8(msg.kind === "blocks" ? 0 : 1, 9);
  let at = 10;
  if (msg.kind === "blocks") {
    at = b.writeUInt16BE(msg.blocks.length, at);
    for (const blk of msg.blocks) {
      at = b.writeUInt8(ENCODINGS.indexOf(blk.encoding), at);
      at += checkHash(blk.sha256).copy(b, at);
      at = b.writeUInt32BE(blk.data.length, at);
      at += blk.data.copy(b, at);
    }
  } else {
    at += checkHash(msg.sha256).copy(b, at);
    at = b.writeUInt16BE(msg.patches.length, at);
    for (const p of msg.patches) {
      at = b.writeUInt32BE(p.at, at);
      at = b.writeUInt32BE(p.data.length, at);
      at += p.data.copy(b, at);
    }
  }
  return b;
}

function decodeBlocks(r: Reader): BlocksMessage {
  const disk = r.u8();
  const offset = r.u64();
  const kind = r.u8();
  if (kind === 0) {
    const n = r.u16();
    if (n === 0 || n > MAX_BLOCKS_PER_FRAME)
      throw protocolError(`BLOCKS with ${n} blocks (1 to ${MAX_BLOCKS_PER_FRAME})`);
    const blocks: Block[] = [];
    for (let i = 0; i < n; i++) {
      const e = r.u8();
      const encoding = ENCODINGS[e];
      if (!encoding) throw protocolError(`BLOCKS block ${i} has unknown encoding ${e}`);
      const sha256 = r.bytes(32);
      const length = r.u32();
      if ((encoding === "ref" || encoding === "zero") && length !== 0) {
        throw protocolError(
          `BLOCKS block ${i} (${encoding}) carries ${length} data bytes; it must carry none`,
        );
      }
      if ((encoding === "raw" || encoding === "zstd") && (length === 0 || length > MAX_BLOCK_SIZE + 1024)) {
        throw protocolError(`BLOCKS block ${i} (${encoding}) has ${length} data bytes`);
      }
      blocks.push({ encoding, sha256, data: r.bytes(length) });
    }
    return { type: "BLOCKS", disk, offset, kind: "blocks", blocks };
  }
  if (kind === 1) {
    const sha256 = r.bytes(32);
    const n = r.u16();
    if (n === 0) throw protocolError("BLOCKS patch without patches");
    const patches: Patch[] = [];
    let end = 0;
    for (let i = 0; i < n; i++) {
      const at = r.u32();
      const length = r.u32();
      if (length === 0 || at < end || at + length > MAX_BLOCK_SIZE) {
        throw protocolError(
          `BLOCKS patch ${i} (${length} bytes at ${at}) is empty, overlaps, is out of order or outside a block`,
        );
      }
      end = at + length;
      patches.push({ at, data: r.bytes(length) });
    }
    return { type: "BLOCKS", disk, offset, kind: "patch", sha256, patches };
  }
  throw protocolError(`BLOCKS of unknown kind ${kind}`);
}

/** Reads a payload front to back; running past its end or leaving bytes over is a protocol error. */
class Reader {
  private at = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  private need(n: number): number {
    if (this.at + n > this.buf.length) throw protocolError(`${this.what} payload is truncated`);
    const at = this.at;
    this.at += n;
    return at;
  }
  u8(): number {
    return this.buf.readUInt8(this.need(1));
  }
  u16(): number {
    return this.buf.readUInt16BE(this.need(2));
  }
  u32(): number {
    return this.buf.readUInt32BE(this.need(4));
  }
  u64(): number {
    const v = this.buf.readBigUInt64BE(this.need(8));
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${this.what} holds a number out of range`);
    return Number(v);
  }
  bytes(n: number): Buffer {
    const at = this.need(n);
    return this.buf.subarray(at, at + n);
  }
  end(): void {
    if (this.at !== this.buf.length)
      throw protocolError(`${this.what} payload has ${this.buf.length - this.at} bytes too many`);
  }
}

function u64(n: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
}

function checkHash(h: Buffer): Buffer {
  if (h.length !== 32) throw new TypeError(`a SHA-256 is 32 bytes, not ${h.length}`);
  return h;
}
