import { crc32 } from "node:zlib";
import type { LifeboatError } from "../base/index.js";
import { checksumMismatch, frameTooLarge, protocolError } from "./errors.js";
import {
  FRAME_FORMAT,
  FRAME_MAGIC,
  type Frame,
  type FrameType,
  HEADER_BYTES,
  MAX_PAYLOAD,
  SEQUENCED,
  flagsAreKnown,
  frameTypeName,
  isFrameType,
} from "./frame.js";
import type { PayloadPool } from "./payload-pool.js";

/**
 * Turns a byte stream cut at arbitrary points into frames. It holds at most
 * one frame: the header while it is incomplete, then exactly the payload the
 * header announced, which the header has already been checked to allow (the
 * limit of its type). A header that is malformed, announces too much, or a
 * frame whose checksum fails raises a LifeboatError (WIRE_PROTOCOL,
 * WIRE_FRAME_TOO_LARGE, WIRE_CHECKSUM); the decoder is then spent and every
 * later push raises the same error, because the stream cannot be trusted to
 * be in step any more. The caller closes the connection.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  private pending: { type: FrameType; flags: number; seq: number; length: number; crc: number } | undefined;
  private payload: Buffer | undefined;
  private payloadFill = 0;
  private failure: LifeboatError | undefined;

  /** `payloads`: where the buffers of large payloads come from (else each is a new allocation). */
  constructor(private readonly payloads?: PayloadPool) {}

  /** Bytes held now (header and payload so far); never more than one maximal frame. */
  get bufferedBytes(): number {
    return this.headerFill + this.payloadFill;
  }

  /** Feeds a chunk; returns the frames it completed, in order. Payloads are private copies or slices of `chunk`. */
  push(chunk: Buffer): Frame[] {
    if (this.failure) throw this.failure;
    const out: Frame[] = [];
    let at = 0;
    try {
      while (at < chunk.length) {
        if (!this.pending) {
          const take = Math.min(HEADER_BYTES - this.headerFill, chunk.length - at);
          chunk.copy(this.header, this.headerFill, at, at + take);
          this.headerFill += take;
          at += take;
          if (this.headerFill < HEADER_BYTES) break;
          this.pending = readHeader(this.header);
          if (this.pending.length === 0) {
            out.push(this.finish(Buffer.alloc(0)));
            continue;
          }
          // The whole payload is in this chunk: slice it, no copy.
          if (this.payloadFill === 0 && chunk.length - at >= this.pending.length) {
            const p = chunk.subarray(at, at + this.pending.length);
            at += this.pending.length;
            out.push(this.finish(p));
            continue;
          }
          this.payload = this.payloads?.take(this.pending.length) ?? Buffer.allocUnsafe(this.pending.length);
        }
        const payload = this.payload!;
        const take = Math.min(payload.length - this.payloadFill, chunk.length - at);
        chunk.copy(payload, this.payloadFill, at, at + take);
        this.payloadFill += take;
        at += take;
        if (this.payloadFill === payload.length) out.push(this.finish(payload));
      }
    } catch (err) {
      this.failure = err as LifeboatError;
      this.payload = undefined;
      throw err;
    }
    return out;
  }

  private finish(payload: Buffer): Frame {
    const p = this.pending!;
    if (crc32(this.header.subarray(0, 20), crc32(payload)) !== p.crc) {
      throw checksumMismatch(
        `${frameTypeName(p.type)} frame${p.seq ? ` seq ${p.seq}` : ""} of ${p.length} bytes fails its CRC-32`,
      );
    }
    this.pending = undefined;
    this.payload = undefined;
    this.payloadFill = 0;
    this.headerFill = 0;
    return { type: p.type, flags: p.flags, seq: p.seq, payload };
  }
}

function readHeader(h: Buffer): { type: FrameType; flags: number; seq: number; length: number; crc: number } {
  const magic = h.readUInt16BE(0);
  if (magic !== FRAME_MAGIC) {
    throw protocolError(
      `bad frame magic 0x${magic.toString(16).padStart(4, "0")} (not a Lifeboat wire stream, or out of step)`,
    );
  }
  const format = h.readUInt8(2);
  if (format !== FRAME_FORMAT) throw protocolError(`unknown frame format ${format}`);
  const type = h.readUInt8(3);
  if (!isFrameType(type)) throw protocolError(`unknown frame type ${type}`);
  const flags = h.readUInt16BE(4);
  if (!flagsAreKnown(flags))
    throw protocolError(`${frameTypeName(type)} frame has unknown flags 0x${flags.toString(16)}`);
  if (h.readUInt16BE(6) !== 0) throw protocolError(`${frameTypeName(type)} frame has reserved bits set`);
  const seq64 = h.readBigUInt64BE(8);
  if (seq64 > BigInt(Number.MAX_SAFE_INTEGER))
    throw protocolError(`sequence number ${seq64} is out of range`);
  const seq = Number(seq64);
  if (SEQUENCED.has(type) ? seq === 0 : seq !== 0) {
    throw protocolError(
      SEQUENCED.has(type)
        ? `${frameTypeName(type)} frame without a sequence number`
        : `${frameTypeName(type)} frame carries sequence number ${seq}; only BLOCKS and POINT are sequenced`,
    );
  }
  const length = h.readUInt32BE(16);
  const limit = MAX_PAYLOAD[type];
  if (length > limit) {
    throw frameTooLarge(`${frameTypeName(type)} frame announces ${length} bytes; the limit is ${limit}`);
  }
  return { type, flags, seq, length, crc: h.readUInt32BE(20) };
}
