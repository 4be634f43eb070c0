import { LifeboatError, settleAll } from "../base/index.js";
import { Limiter } from "./limiter.js";
import type { Repository } from "./repository.js";

/**
 * A disk at one moment is a block map: its chunks, in order, held in a tree
 * of content-addressed pages. A leaf page (level 0) lists up to `fanout`
 * chunk entries — the chunk's id and where it is stored (pack, offset,
 * length); a page at level L lists the ids of up to `fanout` pages at level
 * L-1. An entry whose id is all zeros (ZERO_ID) stands for a chunk of zeros
 * or, in a higher page, a whole subtree of zeros, which is never stored.
 *
 * Because pages are named by their content, two PITs of a disk share every
 * page under which nothing changed: a new PIT after k changed chunks writes at
 * most k pages per level, whatever the disk's size. The shape of the tree
 * depends only on the disk's chunk count, so building a map from scratch and
 * updating an older one give the same root for the same content.
 *
 * Page layout: version (u8 = 1) | level (u8) | 0 (u16) | count (u32 LE) |
 * count entries. A leaf entry is id (32) | pack id (16) | offset (u32 LE) |
 * length (u32 LE), 56 bytes; a higher entry is a page id, 32 bytes.
 */
export const ID_LEN = 32;
export const PACK_ID_LEN = 16;
export const LEAF_ENTRY_LEN = ID_LEN + PACK_ID_LEN + 8;
export const ZERO_ID: Buffer = Buffer.alloc(ID_LEN);
/** The leaf entry of a chunk of zeros. */
export const ZERO_ENTRY: Buffer = Buffer.alloc(LEAF_ENTRY_LEN);
const PAGE_HEADER = 8;
/** Leaf pages an update reads and writes at once (a checkpoint of scattered writes touches many). */
const LEAF_WRITES_AT_ONCE = 64;

/** Page ids (latin1 strings) known to be stored: a Set, or the writer's compact set (known-index.ts). */
export interface PageIdSet {
  has(id: string): boolean;
  add(id: string): unknown;
}

/** Where a chunk's stored object lies: a byte range of a pack (pack.ts). */
export interface ChunkLocation {
  pack: Buffer;
  offset: number;
  length: number;
}

export function leafEntry(id: Uint8Array, loc: ChunkLocation): Buffer {
  const e = Buffer.alloc(LEAF_ENTRY_LEN);
  e.set(id, 0);
  e.set(loc.pack, ID_LEN);
  e.writeUInt32LE(loc.offset, ID_LEN + PACK_ID_LEN);
  e.writeUInt32LE(loc.length, ID_LEN + PACK_ID_LEN + 4);
  return e;
}

/** The chunk id of a leaf entry. */
export function entryId(e: Uint8Array): Buffer {
  return Buffer.from(e.buffer, e.byteOffset, ID_LEN);
}

export function entryLocation(e: Uint8Array): ChunkLocation {
  const b = Buffer.from(e.buffer, e.byteOffset, LEAF_ENTRY_LEN);
  return {
    pack: b.subarray(ID_LEN, ID_LEN + PACK_ID_LEN),
    offset: b.readUInt32LE(ID_LEN + PACK_ID_LEN),
    length: b.readUInt32LE(ID_LEN + PACK_ID_LEN + 4),
  };
}

const entryLen = (level: number) => (level === 0 ? LEAF_ENTRY_LEN : ID_LEN);

export interface BlockMapRef {
  /** Hex id of the root page, or null when every chunk is zero. */
  root: string | null;
  /** Number of page levels (1 = the root is a leaf). */
  depth: number;
  chunkCount: number;
}

export function depthFor(chunkCount: number, fanout: number): number {
  let depth = 1;
  let span = fanout;
  while (span < chunkCount) {
    span *= fanout;
    depth++;
  }
  return depth;
}

/** True for the zero id, and for an entry (leaf or higher) that stands for zeros. */
export function isZeroId(id: Uint8Array): boolean {
  return ZERO_ID.equals(id.subarray(0, ID_LEN));
}

export function encodePage(level: number, entries: readonly Uint8Array[]): Buffer {
  const len = entryLen(level);
  const out = Buffer.alloc(PAGE_HEADER + entries.length * len);
  out[0] = 1;
  out[1] = level;
  out.writeUInt32LE(entries.length, 4);
  entries.forEach((e, i) => {
    if (e.length !== len)
      throw new Error(`block map: a level-${level} entry has ${e.length} bytes, not ${len}`);
    out.set(e, PAGE_HEADER + i * len);
  });
  return out;
}

export function decodePage(page: Buffer, fanout: number): { level: number; entries: Buffer[] } {
  const { count, len } = checkPage(page, fanout);
  const entries: Buffer[] = [];
  for (let i = 0; i < count; i++)
    entries.push(page.subarray(PAGE_HEADER + i * len, PAGE_HEADER + (i + 1) * len));
  return { level: page[1] ?? 0, entries };
}

/**
 * Entry `k` of a page, or undefined past its last: a lookup of one chunk
 * reads one entry per level, without a view of every entry (decodePage).
 */
export function pageEntry(page: Buffer, fanout: number, k: number): Buffer | undefined {
  const { count, len } = checkPage(page, fanout);
  return k < count ? page.subarray(PAGE_HEADER + k * len, PAGE_HEADER + (k + 1) * len) : undefined;
}

function checkPage(page: Buffer, fanout: number): { count: number; len: number } {
  const count = page.length >= PAGE_HEADER ? page.readUInt32LE(4) : -1;
  const len = entryLen(page[1] ?? 0);
  if (page[0] !== 1 || count < 0 || count > fanout || page.length !== PAGE_HEADER + count * len) {
    throw new LifeboatError("STORE_PAGE_INVALID", "a block-map page is malformed", {
      hint: "run `lifeboat store verify --read-data`",
    });
  }
  return { count, len };
}

/**
 * Builds a block map from leaf entries pushed in disk order. Pages are written as
 * levels fill; `known` (ids as latin1 strings) skips pages already stored.
 */
export class BlockMapBuilder {
  private readonly levels: Buffer[][];
  private readonly depth: number;
  private pushed = 0;

  constructor(
    private readonly repo: Repository,
    private readonly chunkCount: number,
    private readonly known?: PageIdSet,
  ) {
    this.depth = depthFor(chunkCount, repo.config.pageFanout);
    this.levels = Array.from({ length: this.depth }, () => []);
  }

  async push(entry: Uint8Array): Promise<void> {
    if (this.pushed >= this.chunkCount) throw new Error("block map: more chunks pushed than the disk holds");
    this.pushed++;
    await this.add(0, isZeroId(entry) ? ZERO_ENTRY : Buffer.from(entry));
  }

  private async add(level: number, id: Buffer): Promise<void> {
    const entries = this.levels[level]!;
    entries.push(id);
    if (entries.length === this.repo.config.pageFanout && level < this.depth - 1) {
      await this.add(level + 1, await this.flush(level));
    }
  }

  private async flush(level: number): Promise<Buffer> {
    const entries = this.levels[level]!;
    this.levels[level] = [];
    if (entries.every(isZeroId)) return ZERO_ID;
    return this.repo.putPage(encodePage(level, entries), this.known);
  }

  async finish(): Promise<BlockMapRef> {
    if (this.pushed !== this.chunkCount) {
      throw new Error(`block map: ${this.pushed} chunks pushed, disk has ${this.chunkCount}`);
    }
    if (this.chunkCount === 0) return { root: null, depth: 0, chunkCount: 0 };
    for (let level = 0; level < this.depth - 1; level++) {
      if (this.levels[level]!.length > 0) await this.add(level + 1, await this.flush(level));
    }
    const root = await this.flush(this.depth - 1);
    return {
      root: isZeroId(root) ? null : root.toString("hex"),
      depth: this.depth,
      chunkCount: this.chunkCount,
    };
  }
}

/**
 * Calls `visit` with the leaf entry of every non-zero chunk in disk order;
 * `onPage` sees every page id (for verify and GC).
 */
export async function walkBlockMap(
  repo: Repository,
  ref: BlockMapRef,
  visit: (index: number, entry: Buffer) => void | Promise<void>,
  /** Called before a page is read; `false` skips the page and everything under it. */
  onPage?: (id: Buffer, level: number) => void | boolean | Promise<void | boolean>,
): Promise<void> {
  if (ref.root === null) return;
  const fanout = repo.config.pageFanout;
  const rec = async (id: Buffer, level: number, start: number): Promise<void> => {
    if (onPage && (await onPage(id, level)) === false) return;
    const { entries } = decodePage(await repo.getPage(id), fanout);
    const span = fanout ** level;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (isZeroId(e)) continue;
      const s = start + i * span;
      if (level === 0) await visit(s, e);
      else await rec(e, level - 1, s);
    }
  };
  await rec(Buffer.from(ref.root, "hex"), ref.depth - 1, 0);
}

/**
 * A new block map equal to `ref` with the leaf entries at the given indexes
 * replaced. Writes only the pages on the paths to changed chunks.
 */
export async function updateBlockMap(
  repo: Repository,
  ref: BlockMapRef,
  changes: ReadonlyMap<number, Uint8Array>,
  known?: PageIdSet,
): Promise<BlockMapRef> {
  const fanout = repo.config.pageFanout;
  for (const i of changes.keys()) {
    if (!Number.isInteger(i) || i < 0 || i >= ref.chunkCount)
      throw new RangeError(`chunk index ${i} out of range`);
  }
  if (changes.size === 0 || ref.chunkCount === 0) return ref;
  const sorted = [...changes.entries()].sort((a, b) => a[0] - b[0]);
  const leaves = new Limiter(LEAF_WRITES_AT_ONCE);
  // Every new page of the tree is stored at once, a parent no later than its children: a page's
  // id is the hash of its content, so the parent can name a child before the child is stored,
  // and the update waits for the file system once, not once per level. Nothing names the new
  // root until the update has resolved, and it resolves only once every page is stored.
  const writes = new Limiter(LEAF_WRITES_AT_ONCE);
  const stored: Promise<void>[] = [];
  const rec = async (
    id: Buffer,
    level: number,
    start: number,
    items: [number, Uint8Array][],
  ): Promise<Buffer> => {
    const span = fanout ** level;
    const count = Math.min(fanout, Math.ceil((ref.chunkCount - start) / span));
    const entries = isZeroId(id)
      ? Array.from({ length: count }, () => (level === 0 ? ZERO_ENTRY : ZERO_ID))
      : decodePage(await repo.getPage(id), fanout).entries.slice();
    // The pages below are independent: written at once, not one after another (a checkpoint of
    // scattered writes touches tens of leaves, and each write waits for the file system).
    const below: Promise<void>[] = [];
    let j = 0;
    while (j < items.length) {
      const slot = Math.floor((items[j]![0] - start) / span);
      let k = j;
      while (k < items.length && Math.floor((items[k]![0] - start) / span) === slot) k++;
      const group = items.slice(j, k);
      if (level === 0) entries[slot] = leafOrZero(group[group.length - 1]![1]);
      else {
        const child = () => rec(entries[slot]!, level - 1, start + slot * span, group);
        below.push(
          (level === 1 ? leaves.run(child) : child()).then((id) => {
            entries[slot] = id;
          }),
        );
      }
      j = k;
    }
    // Every page below is named before this one is made, or the update fails.
    await settleAll(below);
    if (entries.every(isZeroId)) return ZERO_ID;
    // Cached: the next update (a replica's next checkpoint) starts from these pages.
    const page = repo.preparePage(encodePage(level, entries), known, { cache: true });
    if (page.write) stored.push(writes.run(page.write));
    return page.id;
  };
  // Once the root is named (or naming failed) every level has settled, so `stored` is complete;
  // no write of this update may still run once it has resolved or rejected.
  const [named] = await Promise.allSettled([
    rec(ref.root ? Buffer.from(ref.root, "hex") : ZERO_ID, ref.depth - 1, 0, sorted),
  ]);
  await settleAll(stored);
  if (named.status === "rejected") throw named.reason;
  const root = named.value;
  return { ...ref, root: isZeroId(root) ? null : root.toString("hex") };
}

function leafOrZero(e: Uint8Array): Buffer {
  if (isZeroId(e)) return ZERO_ENTRY;
  if (e.length !== LEAF_ENTRY_LEN) throw new Error(`block map: a leaf entry has ${e.length} bytes`);
  return Buffer.from(e);
}

/** The leaf entry of one chunk (ZERO_ENTRY for a zero chunk), reading one page per level. */
export async function readEntry(repo: Repository, ref: BlockMapRef, index: number): Promise<Buffer> {
  if (!Number.isInteger(index) || index < 0 || index >= ref.chunkCount)
    throw new RangeError(`chunk index ${index} out of range`);
  if (ref.root === null) return ZERO_ENTRY;
  const fanout = repo.config.pageFanout;
  let id: Buffer = Buffer.from(ref.root, "hex");
  for (let level = ref.depth - 1; ; level--) {
    const span = fanout ** level;
    const e = pageEntry(await repo.getPage(id), fanout, Math.floor(index / span) % fanout);
    if (!e || isZeroId(e)) return ZERO_ENTRY;
    if (level === 0) return Buffer.from(e);
    id = e;
  }
}

/**
 * The block map of the same disk grown or shrunk to `chunkCount` chunks (new
 * chunks are zeros). Rebuilds the tree, since its shape depends on the count;
 * pages that come out the same are not stored again.
 */
export async function resizeBlockMap(
  repo: Repository,
  ref: BlockMapRef,
  chunkCount: number,
  known?: PageIdSet,
): Promise<BlockMapRef> {
  if (chunkCount === ref.chunkCount) return ref;
  const builder = new BlockMapBuilder(repo, chunkCount, known);
  let next = 0;
  await walkBlockMap(repo, ref, async (i, e) => {
    if (i >= chunkCount) return;
    for (; next < i; next++) await builder.push(ZERO_ENTRY);
    await builder.push(e);
    next = i + 1;
  });
  for (; next < chunkCount; next++) await builder.push(ZERO_ENTRY);
  return builder.finish();
}
