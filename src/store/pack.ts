import { randomBytes } from "node:crypto";
import { alignedBuffer } from "../base/aligned.js";
import { LifeboatError } from "../base/index.js";
import { takeSpare } from "../base/spare.js";
import { type ChunkLocation, ID_LEN, PACK_ID_LEN } from "./block-map.js";
import { ObjectKind } from "./codec.js";
import { Limiter } from "./limiter.js";
import { packName, trashName } from "./names.js";
import type { Repository } from "./repository.js";

/**
 * Chunks are stored many to an object, in packs: a pack is the encoded chunk
 * objects one after another, then the pack's own index, so that a disk of
 * tens of thousands of chunks costs a few hundred files or S3 requests, not
 * tens of thousands. Block-map leaves say where each chunk lies (pack id,
 * offset, length), so a reader needs no index to find it; the trailing index
 * lets a pack be checked and understood on its own.
 *
 *   chunk object | chunk object | … | index object | index length (u32 LE) | "LBPK"
 *
 * Each chunk object is encoded exactly as a stand-alone object named by the
 * chunk's keyed name (codec.ts): moving it to another chunk's place fails
 * authentication. The index object (kind 5, authenticated with the pack's
 * name) lists id (32) | offset (u32 LE) | length (u32 LE) per chunk.
 */
export const PACK_MAGIC = Buffer.from("LBPK", "latin1");
const TRAILER_LEN = 8;
const INDEX_ENTRY_LEN = ID_LEN + 8;
/** A pack is sealed once it holds this many bytes (a chunk never straddles two packs). */
export const DEFAULT_PACK_BYTES = 16 << 20;
/**
 * A new pack's buffer (when no stored pack's is free) is as large as the
 * last pack was, and at least this; it doubles as the pack grows, up to the
 * target and this much more (the chunk that crosses the target, the index).
 * A replicator's checkpoints seal packs well short of the target under a
 * trickle of writes, and reserving the whole target for each held memory
 * that was never used; a stream of full packs gets full buffers at once.
 */
const PACK_BUFFER_STEP = 1 << 20;

export interface PackIndexEntry {
  id: Buffer;
  offset: number;
  length: number;
}

/**
 * Collects encoded chunks into packs and stores each pack when it is full.
 * `add` returns where the chunk will be; the location is valid once
 * `finish` has resolved (and durable after the repository's flush). Stores
 * run in the background, at most `concurrency` at once; `add` waits when
 * they fall behind, so memory stays bounded.
 */
export class PackWriter {
  /** The pack being filled: its bytes so far are buf[0, size). */
  private buf: Buffer = Buffer.alloc(0);
  private index: Buffer[] = [];
  private size = 0;
  private packId = randomBytes(PACK_ID_LEN);
  private readonly stores: Limiter;
  /**
   * Pack buffers kept for reuse: as many as packs are stored at once and the
   * one being filled, so that a stream of packs, ended at each replicator
   * checkpoint, allocates none once it runs.
   */
  private readonly spares: number;
  private readonly running = new Set<Promise<void>>();
  private readonly storing = new Set<string>();
  /**
   * Buffers of stored packs, for the next ones: a pack buffer is large, and
   * allocating one per pack costs page faults and leaves the allocator's
   * heaps fragmented (freed blocks of this size are not returned to the system).
   * They are page-aligned, so that a local repository writes them to disk
   * directly instead of through the page cache (backends/local.ts).
   */
  private readonly spare: Buffer[] = [];
  /** Bytes of the pack sealed last (reserve). */
  private lastPackBytes = 0;
  private failure: Error | undefined;
  /** The seal under way, while it waits for a store slot (see add). */
  private sealing: Promise<void> | undefined;
  /** Packs stored so far and their bytes. */
  packs = 0;
  bytes = 0;

  /**
   * `fullPacks`: the chunks come as one stream that fills pack after pack
   * (an import), so the first pack's buffer is reserved whole rather than
   * grown from a MiB by doubling, which would allocate and copy twice its size.
   */
  constructor(
    private readonly repo: Repository,
    private readonly targetBytes = DEFAULT_PACK_BYTES,
    concurrency = 2,
    fullPacks = false,
  ) {
    this.stores = new Limiter(concurrency);
    this.spares = concurrency + 1;
    if (fullPacks) this.lastPackBytes = targetBytes + PACK_BUFFER_STEP;
  }

  async add(id: Uint8Array, encoded: Buffer): Promise<ChunkLocation> {
    // A full pack waits for a store slot before it is sealed; nothing is added meanwhile, so at
    // most `concurrency` packs are being stored and one filled: that is all the memory packs take.
    while (this.sealing) await this.sealing;
    if (this.failure !== undefined) throw this.failure;
    const loc = { pack: this.packId, offset: this.size, length: encoded.length };
    const e = Buffer.alloc(INDEX_ENTRY_LEN);
    e.set(id, 0);
    e.writeUInt32LE(loc.offset, ID_LEN);
    e.writeUInt32LE(loc.length, ID_LEN + 4);
    this.reserve(encoded.length);
    this.buf.set(encoded, this.size);
    this.index.push(e);
    this.size += encoded.length;
    if (this.size >= this.targetBytes) await this.seal();
    return loc;
  }

  /** True while the pack `packId` is being filled or stored (its chunks cannot be read yet). */
  holds(packId: Uint8Array): boolean {
    return this.packId.equals(packId) || this.storing.has(Buffer.from(packId).toString("hex"));
  }

  /** Stores the pack being filled (if any) and waits for every store; rethrows the first failure. */
  async finish(): Promise<void> {
    while (this.sealing) await this.sealing;
    await this.seal();
    await Promise.all(this.running);
    if (this.failure !== undefined) throw this.failure;
  }

  /** Makes room for `more` bytes after the pack's current end (a stored pack's buffer, or one grown by doubling). */
  private reserve(more: number): void {
    const need = this.size + more;
    if (need <= this.buf.length) return;
    const cap = this.targetBytes + PACK_BUFFER_STEP;
    const start = this.size === 0 ? this.lastPackBytes : 0;
    const want =
      need > cap
        ? need + PACK_BUFFER_STEP
        : Math.min(cap, Math.max(need, 2 * this.buf.length, start, PACK_BUFFER_STEP));
    // A new pack takes the largest spare (it will grow); a growing one, the smallest that fits.
    const largest = this.size === 0 && (this.spare[0]?.length ?? 0) >= need ? this.spare.shift() : undefined;
    const next = largest ?? takeSpare(this.spare, need) ?? alignedBuffer(want);
    this.buf.copy(next, 0, 0, this.size);
    this.keep(this.buf); // outgrown: it may serve a later, smaller pack
    this.buf = next;
  }

  /** Keeps a buffer no pack uses now for a later pack: the largest `spares`, largest first. */
  private keep(buf: Buffer): void {
    if (buf.length === 0) return;
    this.spare.push(buf);
    this.spare.sort((a, b) => b.length - a.length).splice(this.spares);
  }

  private seal(): Promise<void> {
    const sealing = this.sealNow().finally(() => {
      if (this.sealing === sealing) this.sealing = undefined;
    });
    this.sealing = sealing;
    return sealing;
  }

  private async sealNow(): Promise<void> {
    if (this.index.length === 0) return;
    await this.stores.waitForSlot();
    const name = packName(this.packId);
    const index = this.repo.codec.encode(name, ObjectKind.packIndex, Buffer.concat(this.index));
    const trailer = Buffer.alloc(TRAILER_LEN);
    trailer.writeUInt32LE(index.length, 0);
    PACK_MAGIC.copy(trailer, 4);
    this.reserve(index.length + TRAILER_LEN);
    index.copy(this.buf, this.size);
    trailer.copy(this.buf, this.size + index.length);
    const whole = this.buf;
    const data = whole.subarray(0, this.size + index.length + TRAILER_LEN);
    this.lastPackBytes = data.length;
    this.buf = Buffer.alloc(0); // the next pack gets a buffer of its own: this one is being stored
    this.index = [];
    this.size = 0;
    this.storing.add(this.packId.toString("hex"));
    const stored = this.packId.toString("hex");
    this.packId = randomBytes(PACK_ID_LEN);
    // A slot is free (nothing else stores packs, and nothing was awaited since): the store starts now.
    const task = this.stores
      .run(() => this.repo.backend.put(name, data))
      .then(
        () => {
          this.packs++;
          this.bytes += data.length;
          // Stored: a backend keeps no reference to the bytes of a put once it resolved.
          // The largest are kept: a small one would only be grown again.
          this.keep(whole);
        },
        (err: unknown) => {
          this.failure ??= err instanceof Error ? err : new Error(String(err));
        },
      )
      .finally(() => {
        this.running.delete(task);
        this.storing.delete(stored);
      });
    this.running.add(task);
  }
}

/**
 * Reads a pack's own index (the chunks it holds and where): two small ranged
 * reads. A pack GC moved to the trash is read from there.
 */
export async function readPackIndex(repo: Repository, name: string): Promise<PackIndexEntry[]> {
  const st = (await repo.backend.stat(name)) ?? (await repo.backend.stat(trashName(name)));
  if (!st) {
    throw new LifeboatError("STORE_OBJECT_MISSING", `object ${name} is missing`, {
      hint: "run `lifeboat store verify` to see which PITs are affected",
    });
  }
  if (st.size < TRAILER_LEN) throw packCorrupt(name, `is truncated (${st.size} bytes)`);
  const trailer = await repo.backend.get(st.name, { offset: st.size - TRAILER_LEN, length: TRAILER_LEN });
  const indexLen = indexLength(name, st.size, trailer);
  const raw = await repo.backend.get(st.name, { offset: st.size - TRAILER_LEN - indexLen, length: indexLen });
  return parseIndex(repo, name, raw);
}

/** The index of a pack whose bytes are all at hand. */
export function decodePackIndex(repo: Repository, name: string, pack: Buffer): PackIndexEntry[] {
  if (pack.length < TRAILER_LEN) throw packCorrupt(name, `is truncated (${pack.length} bytes)`);
  const indexLen = indexLength(name, pack.length, pack.subarray(pack.length - TRAILER_LEN));
  const end = pack.length - TRAILER_LEN;
  return parseIndex(repo, name, pack.subarray(end - indexLen, end));
}

function indexLength(name: string, size: number, trailer: Buffer): number {
  if (trailer.length !== TRAILER_LEN || !trailer.subarray(4).equals(PACK_MAGIC))
    throw packCorrupt(name, "has no index trailer (truncated or damaged)");
  const indexLen = trailer.readUInt32LE(0);
  if (indexLen > size - TRAILER_LEN) throw packCorrupt(name, "has an index longer than itself");
  return indexLen;
}

function parseIndex(repo: Repository, name: string, raw: Buffer): PackIndexEntry[] {
  const plain = repo.codec.decode(name, ObjectKind.packIndex, raw);
  if (plain.length % INDEX_ENTRY_LEN !== 0) throw packCorrupt(name, "has a malformed index");
  const out: PackIndexEntry[] = [];
  for (let p = 0; p < plain.length; p += INDEX_ENTRY_LEN) {
    out.push({
      id: plain.subarray(p, p + ID_LEN),
      offset: plain.readUInt32LE(p + ID_LEN),
      length: plain.readUInt32LE(p + ID_LEN + 4),
    });
  }
  return out;
}

function packCorrupt(name: string, what: string): LifeboatError {
  return new LifeboatError("STORE_PACK_CORRUPT", `pack ${name} ${what}`, {
    hint: "run `lifeboat store verify --read-data` to list the PITs and byte ranges it affects",
  });
}

/**
 * Groups chunk locations that lie back to back (or repeat) in the same pack,
 * sorted by pack then offset, so that each group is read with one request
 * covering `stretchRange(group)`.
 */
export function packStretches<T extends { pack: string; offset: number; length: number }>(items: T[]): T[][] {
  const sorted = [...items].sort((a, b) =>
    a.pack === b.pack ? a.offset - b.offset : a.pack < b.pack ? -1 : 1,
  );
  const out: T[][] = [];
  let end = 0;
  for (const it of sorted) {
    const group = out.at(-1);
    if (group && group[0]!.pack === it.pack && it.offset <= end) group.push(it);
    else {
      out.push([it]);
      end = 0;
    }
    end = Math.max(end, it.offset + it.length);
  }
  return out;
}

/** The bytes of its pack that a group from packStretches covers. */
export function stretchRange(group: readonly { offset: number; length: number }[]): {
  offset: number;
  length: number;
} {
  const offset = group[0]!.offset;
  const end = Math.max(...group.map((g) => g.offset + g.length));
  return { offset, length: end - offset };
}
