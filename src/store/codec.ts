import { createCipheriv, createDecipheriv, randomFillSync } from "node:crypto";
import { Decompressor } from "zstd-napi";
import zstd from "zstd-napi/binding.js";
import { LifeboatError } from "../base/index.js";

/**
 * Every object in the repository (chunk, block-map page, PIT, metadata) is
 * stored as
 *
 *   header (8 bytes) | nonce (12) | AES-256-GCM ciphertext | tag (16)
 *
 * header = "LBOB" | format version (1) | kind | flags | 0. The header and the
 * object's name are the GCM additional data, so an object cannot be moved to
 * another name or have its kind or flags changed without failing
 * authentication. The plaintext is zstd-compressed when that makes it smaller
 * (flag bit 0). docs/format.md describes the layout.
 */
export const OBJECT_FORMAT_VERSION = 1;
const MAGIC = Buffer.from("LBOB", "latin1");
const HEADER_LEN = 8;
const NONCE_LEN = 12;
const TAG_LEN = 16;
const NONCES = 256;
export const OBJECT_OVERHEAD = HEADER_LEN + NONCE_LEN + TAG_LEN;
const FLAG_ZSTD = 1;

export const ObjectKind = { chunk: 1, page: 2, pit: 3, meta: 4, packIndex: 5 } as const;
export type ObjectKind = (typeof ObjectKind)[keyof typeof ObjectKind];

/** One per thread: zstd contexts are reused across calls. */
export class ObjectCodec {
  private readonly cctx = new zstd.CCtx();
  /** Where encodeInto compresses (grown to the largest plaintext). */
  private compressed = Buffer.alloc(0);
  private readonly decompressor = new Decompressor();
  private readonly dctx = new zstd.DCtx();

  /** Random bytes for nonces, filled NONCES at a time: one call to the generator per object costs more than the cipher of a small one. */
  private readonly nonces = Buffer.allocUnsafe(NONCE_LEN * NONCES);
  private noncesUsed = NONCES;

  constructor(
    private readonly encryptionKey: Buffer,
    compressionLevel = 1,
  ) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, compressionLevel);
  }

  /** A fresh random nonce, valid until the next call (encode copies it at once). */
  private nonce(): Buffer {
    if (this.noncesUsed === NONCES) {
      randomFillSync(this.nonces);
      this.noncesUsed = 0;
    }
    const at = NONCE_LEN * this.noncesUsed++;
    return this.nonces.subarray(at, at + NONCE_LEN);
  }

  /**
   * `compressed`: a zstd frame of `plaintext` made elsewhere (the agent's, as
   * it came over the wire), used instead of compressing again. The caller
   * vouches that it decompresses to exactly `plaintext`; every read checks
   * the chunk's id anyway.
   */
  encode(name: string, kind: ObjectKind, plaintext: Uint8Array, compressed?: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(plaintext.length + OBJECT_OVERHEAD);
    return out.subarray(0, this.encodeInto(name, kind, plaintext, out, compressed));
  }

  /**
   * As encode, but the object goes into `dest` (at least the plaintext's
   * length and OBJECT_OVERHEAD), which must not overlap the plaintext.
   * Returns the object's length. Only the cipher's output is allocated.
   */
  encodeInto(
    name: string,
    kind: ObjectKind,
    plaintext: Uint8Array,
    dest: Uint8Array,
    compressed?: Uint8Array,
  ): number {
    let body: Uint8Array = plaintext;
    let flags = 0;
    if (plaintext.length > 0) {
      let z = compressed;
      if (!z) {
        const bound = zstd.compressBound(plaintext.length);
        if (this.compressed.length < bound) this.compressed = Buffer.allocUnsafeSlow(bound);
        z = this.compressed.subarray(0, this.cctx.compress2(this.compressed, plaintext));
      }
      if (z.length < plaintext.length) {
        body = z;
        flags |= FLAG_ZSTD;
      }
    }
    const size = HEADER_LEN + NONCE_LEN + body.length + TAG_LEN;
    if (dest.length < size) throw new RangeError(`no room for object ${name}: ${size} bytes`);
    const out = Buffer.from(dest.buffer, dest.byteOffset, size);
    out.set(MAGIC, 0);
    out[4] = OBJECT_FORMAT_VERSION;
    out[5] = kind;
    out[6] = flags;
    out[7] = 0;
    const nonce = this.nonce();
    nonce.copy(out, HEADER_LEN);
    const cipher = createCipheriv("aes-256-gcm", this.encryptionKey, nonce);
    cipher.setAAD(Buffer.concat([out.subarray(0, HEADER_LEN), Buffer.from(name, "utf8")]));
    const n = cipher.update(body).copy(out, HEADER_LEN + NONCE_LEN);
    cipher.final();
    cipher.getAuthTag().copy(out, HEADER_LEN + NONCE_LEN + n);
    return size;
  }

  /** Decrypts and decompresses; throws STORE_OBJECT_* errors naming the object on any damage. */
  decode(name: string, expected: ObjectKind, data: Uint8Array): Buffer {
    const { body, zstd: compressed } = this.open(name, expected, data);
    if (!compressed) return body;
    try {
      return this.decompressor.decompress(body);
    } catch (err) {
      throw damaged("STORE_OBJECT_CORRUPT", name, "does not decompress", err);
    }
  }

  /**
   * As decode, but the plaintext goes straight into `dest` (no buffer of its
   * own, no copy of it). Returns the plaintext's length; the plaintext is
   * written only when it fits, so a caller that expects an exact length
   * checks the result.
   */
  decodeInto(name: string, expected: ObjectKind, data: Uint8Array, dest: Uint8Array): number {
    const { body, zstd: compressed } = this.open(name, expected, data);
    if (!compressed) {
      if (body.length <= dest.length) dest.set(body);
      return body.length;
    }
    try {
      const size = zstd.getFrameContentSize(body);
      if (size !== null && size > dest.length) return size;
      return this.dctx.decompress(dest, body);
    } catch (err) {
      throw damaged("STORE_OBJECT_CORRUPT", name, "does not decompress", err);
    }
  }

  /** Checks the header and decrypts: the body, and whether it is compressed. */
  private open(name: string, expected: ObjectKind, data: Uint8Array): { body: Buffer; zstd: boolean } {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length === 0) throw damaged("STORE_OBJECT_EMPTY", name, "is empty (zero bytes)");
    if (buf.length < OBJECT_OVERHEAD) {
      throw damaged("STORE_OBJECT_TRUNCATED", name, `is truncated (${buf.length} bytes)`);
    }
    if (!buf.subarray(0, 4).equals(MAGIC))
      throw damaged("STORE_OBJECT_CORRUPT", name, "has no Lifeboat header");
    const version = buf[4] ?? 0;
    if (version > OBJECT_FORMAT_VERSION) {
      throw new LifeboatError(
        "STORE_FORMAT_TOO_NEW",
        `object ${name} has format version ${version}; this Lifeboat reads up to ${OBJECT_FORMAT_VERSION}`,
        { hint: "upgrade Lifeboat to read this repository" },
      );
    }
    const kind = buf[5];
    if (kind !== expected)
      throw damaged("STORE_OBJECT_CORRUPT", name, `has kind ${kind}, expected ${expected}`);
    const flags = buf[6] ?? 0;
    const header = buf.subarray(0, HEADER_LEN);
    const nonce = buf.subarray(HEADER_LEN, HEADER_LEN + NONCE_LEN);
    const tag = buf.subarray(buf.length - TAG_LEN);
    const body = buf.subarray(HEADER_LEN + NONCE_LEN, buf.length - TAG_LEN);
    let plain: Buffer;
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.encryptionKey, nonce);
      decipher.setAAD(Buffer.concat([header, Buffer.from(name, "utf8")]));
      decipher.setAuthTag(tag);
      // GCM is a stream mode: update() returns every byte and final() only checks the tag.
      const head = decipher.update(body);
      const tail = decipher.final();
      plain = tail.length === 0 ? head : Buffer.concat([head, tail]);
    } catch (err) {
      throw damaged(
        "STORE_OBJECT_CORRUPT",
        name,
        "fails authentication (damaged, or written with another key)",
        err,
      );
    }
    return { body: plain, zstd: (flags & FLAG_ZSTD) !== 0 };
  }
}

export function damaged(code: string, name: string, what: string, cause?: unknown): LifeboatError {
  return new LifeboatError(code, `object ${name} ${what}`, {
    hint: "run `lifeboat store verify --read-data` to list the PITs and byte ranges it affects",
    cause,
  });
}
