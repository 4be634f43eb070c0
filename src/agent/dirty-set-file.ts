/**
 * The dirty set on disk, so that it survives an agent restart.
 *
 * Protocol for the caller (the agent's run loop):
 *  1. At start, `loadDirtySet(file)`. Only status `clean` means the set is
 *     complete; any other status (`unclean`: the agent crashed or was killed,
 *     or the machine rebooted; `missing`; `corrupt`) means writes may have gone
 *     untracked, and the disk must be rescanned. An `unclean` file's set is
 *     still returned: its ranges are dirty for sure.
 *  2. Straight away, `saveDirtySet(file, set, { cleanShutdown: false })`, so
 *     that a crash from now on is seen as one. Save again (still not clean)
 *     as often as losing the ranges since the last save would be costly.
 *  3. On a clean stop, after the tracker has delivered its last events,
 *     `saveDirtySet(file, set, { cleanShutdown: true })`.
 *
 * Format (little-endian): "LBDIRTY1", u8 version 1, u8 clean flag, u16 0,
 * u32 block size, u32 level, u64 disk size, u32 max ranges per block, u32
 * max partial blocks, u64 max bitmap bytes, f64 time of the oldest write (ms
 * since the epoch, -1 for none), u32 n + n bytes of the bitmap
 * raw-deflated, u32 count of partial blocks, each u64 block + u16 pairs + u32
 * pairs; then the SHA-256 of everything before it. Writes go to a temporary
 * name, are fsynced, renamed over the file, and the directory is fsynced.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { LifeboatError, writeFileAtomic } from "../base/index.js";
import { DirtySet } from "./dirty-set.js";

const MAGIC = Buffer.from("LBDIRTY1");
const VERSION = 1;

export type DirtySetFileStatus = "clean" | "unclean" | "missing" | "corrupt";

export interface LoadedDirtySet {
  status: DirtySetFileStatus;
  /** The stored set (clean or unclean), else null. */
  set: DirtySet | null;
  /** For `corrupt`: what is wrong. */
  problem?: string;
}

export function encodeDirtySet(set: DirtySet, cleanShutdown: boolean): Buffer {
  const { level, bits, partial, since } = set.exportState();
  const o = set.options;
  const head = Buffer.alloc(8 + 4 + 4 + 4 + 8 + 4 + 4 + 8 + 8);
  let at = MAGIC.copy(head, 0);
  at = head.writeUInt8(VERSION, at);
  at = head.writeUInt8(cleanShutdown ? 1 : 0, at);
  at = head.writeUInt16LE(0, at);
  at = head.writeUInt32LE(set.blockSize, at);
  at = head.writeUInt32LE(level, at);
  at = head.writeBigUInt64LE(BigInt(set.diskSize), at);
  at = head.writeUInt32LE(o.maxRangesPerBlock!, at);
  at = head.writeUInt32LE(o.maxPartialBlocks!, at);
  at = head.writeBigUInt64LE(BigInt(Math.min(o.maxBitmapBytes!, Number.MAX_SAFE_INTEGER)), at);
  head.writeDoubleLE(since ?? -1, at);
  const packed = deflateRawSync(bits);
  const parts: Buffer[] = [head, u32(packed.length), packed, u32(partial.size)];
  for (const [block, r] of partial) {
    const b = Buffer.alloc(10 + 4 * r.length);
    b.writeBigUInt64LE(BigInt(block), 0);
    b.writeUInt16LE(r.length / 2, 8);
    r.forEach((v, i) => b.writeUInt32LE(v, 10 + 4 * i));
    parts.push(b);
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([body, createHash("sha256").update(body).digest()]);
}

/** Decodes a stored set; throws a plain Error saying what is wrong (loadDirtySet turns it into `corrupt`). */
export function decodeDirtySet(buf: Buffer): { set: DirtySet; cleanShutdown: boolean } {
  if (buf.length < 32 + 52) throw new Error("file too short");
  const body = buf.subarray(0, buf.length - 32);
  if (
    !createHash("sha256")
      .update(body)
      .digest()
      .equals(buf.subarray(buf.length - 32))
  )
    throw new Error("checksum mismatch");
  if (!body.subarray(0, 8).equals(MAGIC)) throw new Error("not a dirty-set file");
  if (body.readUInt8(8) !== VERSION) throw new Error(`unknown version ${body.readUInt8(8)}`);
  const cleanShutdown = body.readUInt8(9) === 1;
  const blockSize = body.readUInt32LE(12);
  const level = body.readUInt32LE(16);
  const diskSize = Number(body.readBigUInt64LE(20));
  const maxRangesPerBlock = body.readUInt32LE(28);
  const maxPartialBlocks = body.readUInt32LE(32);
  const maxBitmapBytes = Number(body.readBigUInt64LE(36));
  const sinceRaw = body.readDoubleLE(44);
  const since = sinceRaw >= 0 ? sinceRaw : null;
  let at = 52;
  const n = body.readUInt32LE(at);
  const bits = new Uint8Array(inflateRawSync(body.subarray(at + 4, at + 4 + n)));
  at += 4 + n;
  const opts = { diskSize, blockSize, maxRangesPerBlock, maxPartialBlocks, maxBitmapBytes };
  const granules = Math.ceil(diskSize / (blockSize * 2 ** level));
  if (level > 52 || bits.length !== Math.ceil(granules / 8)) throw new Error("bitmap size does not match");
  const count = body.readUInt32LE(at);
  at += 4;
  const partial = new Map<number, number[]>();
  for (let i = 0; i < count; i++) {
    const block = Number(body.readBigUInt64LE(at));
    const pairs = body.readUInt16LE(at + 8);
    at += 10;
    const r: number[] = [];
    for (let j = 0; j < 2 * pairs; j++, at += 4) r.push(body.readUInt32LE(at));
    if (block * blockSize >= diskSize || r.some((v, j) => v > blockSize || (j > 0 && v < r[j - 1]!)))
      throw new Error(`bad ranges for block ${block}`);
    partial.set(block, r);
  }
  if (at !== body.length) throw new Error("trailing bytes");
  return { set: DirtySet.fromState(opts, { level, bits, partial, since }), cleanShutdown };
}

/** Reads a dirty-set file. Never throws for a missing or damaged file: those are statuses. */
export async function loadDirtySet(file: string): Promise<LoadedDirtySet> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { status: "missing", set: null };
    throw stateError(file, err);
  }
  try {
    const { set, cleanShutdown } = decodeDirtySet(buf);
    return { status: cleanShutdown ? "clean" : "unclean", set };
  } catch (err) {
    return { status: "corrupt", set: null, problem: (err as Error).message };
  }
}

/** Writes the set durably: temporary file, fsync, rename, fsync of the directory. */
export async function saveDirtySet(
  file: string,
  set: DirtySet,
  opts: { cleanShutdown: boolean },
): Promise<void> {
  const data = encodeDirtySet(set, opts.cleanShutdown);
  try {
    await writeFileAtomic(file, data);
  } catch (err) {
    throw stateError(file, err);
  }
}

function stateError(file: string, err: unknown): LifeboatError {
  return new LifeboatError(
    "AGENT_STATE_IO",
    `cannot read or write the agent's dirty-set file ${file}: ${(err as Error).message}`,
    {
      hint: "check that the agent's state directory exists, is writable by root, and its filesystem has space",
      cause: err,
    },
  );
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
