/**
 * The set of a disk's bytes written (or discarded, or zeroed) since they were
 * last read for shipping.
 *
 * Two layers:
 *  - a bitmap of *granules*: one bit per `granule` bytes (the block size, or
 *    a power-of-two multiple of it once coarsened). Its memory is fixed by the
 *    disk size: 2 MiB for 1 TiB at 64 KiB.
 *  - sub-block byte ranges for blocks that only small writes touched, so that
 *    a 4 KiB write costs about 4 KiB to ship rather than a whole block.
 *
 * Never losing a dirty byte is the contract; precision is best effort. When a
 * cap is reached the set coarsens, it never drops: the bitmap's granule
 * doubles until the bitmap fits `maxBitmapBytes`, a block with more than
 * `maxRangesPerBlock` ranges becomes wholly dirty, and past
 * `maxPartialBlocks` blocks with ranges the older half of them become wholly
 * dirty.
 *
 * `take()` hands over the current content and leaves the set empty, in one
 * synchronous step (nothing can interleave on the event loop), so writes
 * traced after the take land in the now-empty set: that is the consistency
 * pass's snapshot. If the pass fails, `merge()` puts the taken set back.
 */
import type { ByteRange } from "../store/disk-reader.js";

export interface DirtySetOptions {
  /** Disk size in bytes. */
  diskSize: number;
  /** Block size in bytes: a power of two, at least 512 (default 64 KiB). */
  blockSize?: number;
  /** Cap on the bitmap's bytes; the granule doubles until it fits (default 8 MiB: 4 TiB at 64 KiB). */
  maxBitmapBytes?: number;
  /** Cap on blocks tracked by byte ranges (default 65 536). */
  maxPartialBlocks?: number;
  /** Cap on byte ranges per block (default 8). */
  maxRangesPerBlock?: number;
}

/** @internal what the file codec stores. */
export interface DirtySetState {
  level: number;
  bits: Uint8Array;
  partial: Map<number, number[]>;
  since: number | null;
}

type Limits = Required<Omit<DirtySetOptions, "diskSize">>;

const DEFAULTS: Limits = {
  blockSize: 64 << 10,
  maxBitmapBytes: 8 << 20,
  maxPartialBlocks: 65536,
  maxRangesPerBlock: 8,
};

export class DirtySet {
  readonly diskSize: number;
  readonly blockSize: number;
  /** log2(granule / blockSize). */
  private level = 0;
  private bits: Uint8Array;
  /** Some bit of `bits` may be set (bits are only ever set, and cleared all at once by take). */
  private anyBits = false;
  /** Block index → sorted, disjoint, non-adjacent [start, end) pairs relative to the block. */
  private partial = new Map<number, number[]>();
  private readonly limits: Limits;
  private since: number | null = null;

  constructor(opts: DirtySetOptions) {
    this.limits = { ...DEFAULTS, ...stripUndefined(opts) };
    const bs = this.limits.blockSize;
    if (!(bs >= 512 && (bs & (bs - 1)) === 0))
      throw new RangeError(`block size ${bs} is not a power of two >= 512`);
    if (!(Number.isSafeInteger(opts.diskSize) && opts.diskSize >= 0))
      throw new RangeError(`bad disk size ${opts.diskSize}`);
    this.diskSize = opts.diskSize;
    this.blockSize = bs;
    while (Math.ceil(this.granuleCount(this.level) / 8) > this.limits.maxBitmapBytes) this.level++;
    this.bits = new Uint8Array(Math.ceil(this.granuleCount(this.level) / 8));
  }

  /** Options to build an empty set like this one. */
  get options(): DirtySetOptions {
    return { diskSize: this.diskSize, ...this.limits };
  }

  /** Bytes per bitmap bit: the block size, doubled once per coarsening. */
  get granule(): number {
    return this.blockSize * 2 ** this.level;
  }

  /** True when nothing is dirty (at once: the agent asks often, and a large disk's bitmap has megabytes). */
  get isEmpty(): boolean {
    return this.partial.size === 0 && !this.anyBits;
  }

  /**
   * When the oldest write in the set happened (ms since the epoch, as the
   * callers of `add` gave it), or null: the replication lag is now minus this.
   */
  get dirtySince(): number | null {
    return this.since;
  }

  /**
   * Marks `length` bytes at `offset` dirty (clipped to the disk). `at`, when
   * given, is when the write was seen (from the caller's Clock); the oldest
   * is kept as `dirtySince`.
   */
  add(offset: number, length: number, at?: number): void {
    const end = Math.min(offset + length, this.diskSize);
    offset = Math.max(0, offset);
    if (end <= offset) return;
    if (at !== undefined) this.since = this.since === null ? at : Math.min(this.since, at);
    const B = this.blockSize;
    const b0 = Math.floor(offset / B);
    const b1 = Math.floor((end - 1) / B);
    // Blocks wholly covered go to the bitmap in one sweep; the (at most two) edges may be partial.
    let first = b0;
    let last = b1;
    if (offset > b0 * B || end < Math.min((b0 + 1) * B, this.diskSize)) {
      this.addPartial(b0, offset - b0 * B, Math.min(end, (b0 + 1) * B) - b0 * B);
      first = b0 + 1;
    }
    if (b1 >= first && end < Math.min((b1 + 1) * B, this.diskSize)) {
      this.addPartial(b1, Math.max(offset, b1 * B) - b1 * B, end - b1 * B);
      last = b1 - 1;
    }
    if (first <= last) this.markBlocks(first, last);
  }

  /** Marks 512-byte sectors dirty, as the trace reports them. */
  addSectors(sector: number, count: number, at?: number): void {
    this.add(sector * 512, count * 512, at);
  }

  /** The dirty bytes as sorted, disjoint, non-adjacent ranges inside the disk. */
  extents(): ByteRange[] {
    const out: ByteRange[] = [];
    const push = (s: number, e: number) => {
      const lastR = out[out.length - 1];
      if (lastR && lastR.offset + lastR.length >= s) lastR.length = Math.max(lastR.length, e - lastR.offset);
      else out.push({ offset: s, length: e - s });
    };
    const B = this.blockSize;
    const keys = [...this.partial.keys()].filter((b) => !this.bit(this.granuleOf(b))).sort((a, b) => a - b);
    let pi = 0;
    const emitPartialsBefore = (limit: number) => {
      while (pi < keys.length && keys[pi]! * B < limit) {
        const b = keys[pi++]!;
        const r = this.partial.get(b)!;
        for (let i = 0; i < r.length; i += 2) push(b * B + r[i]!, b * B + r[i + 1]!);
      }
    };
    const G = this.granule;
    for (let i = 0; i < this.bits.length; i++) {
      const byte = this.bits[i]!;
      if (byte === 0) continue;
      for (let j = 0; j < 8; j++) {
        if (!(byte & (1 << j))) continue;
        const g = i * 8 + j;
        emitPartialsBefore(g * G);
        push(g * G, Math.min((g + 1) * G, this.diskSize));
      }
    }
    emitPartialsBefore(Infinity);
    return out;
  }

  /** Total bytes `extents()` covers. */
  dirtyBytes(): number {
    return this.extents().reduce((n, r) => n + r.length, 0);
  }

  /** An estimate of the memory this set holds, in bytes. */
  memoryBytes(): number {
    let n = this.bits.length;
    for (const r of this.partial.values()) n += 64 + 8 * r.length;
    return n;
  }

  /** Takes the current content as a new set and leaves this one empty (atomically: it is synchronous). */
  take(): DirtySet {
    const taken = new DirtySet(this.options);
    taken.level = this.level;
    taken.bits = this.bits;
    taken.anyBits = this.anyBits;
    taken.partial = this.partial;
    taken.since = this.since;
    this.bits = new Uint8Array(this.bits.length);
    this.anyBits = false;
    this.partial = new Map();
    this.since = null;
    return taken;
  }

  /** Adds everything `other` holds (a set taken earlier whose pass failed, or one loaded from disk). */
  merge(other: DirtySet): void {
    for (const r of other.extents()) this.add(r.offset, r.length, other.since ?? undefined);
  }

  /** Doubles the granule, halving the bitmap; every dirty byte stays dirty. */
  coarsen(): void {
    const next = new Uint8Array(Math.ceil(this.granuleCount(this.level + 1) / 8));
    for (let i = 0; i < this.bits.length; i++) {
      const byte = this.bits[i]!;
      if (byte === 0) continue;
      for (let j = 0; j < 8; j++) if (byte & (1 << j)) setBit(next, (i * 8 + j) >>> 1);
    }
    this.level++;
    this.bits = next;
  }

  /** A new set for a disk of another size holding this set's dirty bytes (those inside the new size). */
  resized(diskSize: number): DirtySet {
    const s = new DirtySet({ ...this.options, diskSize });
    s.merge(this);
    return s;
  }

  /** @internal state for the file codec. */
  exportState(): DirtySetState {
    return { level: this.level, bits: this.bits, partial: this.partial, since: this.since };
  }

  /** @internal rebuilds a set from the file codec's state (validated there). */
  static fromState(opts: DirtySetOptions, state: DirtySetState): DirtySet {
    const s = new DirtySet({ ...opts, maxBitmapBytes: Infinity });
    s.level = state.level;
    s.bits = state.bits;
    s.anyBits = state.bits.some((b) => b !== 0);
    s.partial = state.partial;
    s.since = state.since;
    const capped = new DirtySet(opts);
    if (capped.level > s.level) {
      capped.merge(s);
      return capped;
    }
    return s;
  }

  private granuleCount(level: number): number {
    return Math.ceil(this.diskSize / (this.blockSize * 2 ** level));
  }

  private granuleOf(block: number): number {
    return Math.floor(block / 2 ** this.level);
  }

  private bit(g: number): boolean {
    return ((this.bits[g >>> 3] ?? 0) & (1 << (g & 7))) !== 0;
  }

  /** Marks blocks first..last wholly dirty. */
  private markBlocks(first: number, last: number): void {
    const g0 = this.granuleOf(first);
    const g1 = this.granuleOf(last);
    this.anyBits = true;
    for (let g = g0; g <= g1; g++) {
      if ((g & 7) === 0 && g + 7 <= g1) {
        this.bits[g >>> 3] = 0xff;
        g += 7;
      } else setBit(this.bits, g);
    }
    // Ranges of blocks now inside dirty granules are redundant; drop the cheap-to-find ones.
    if (this.partial.size && last - first < 64) for (let b = first; b <= last; b++) this.partial.delete(b);
  }

  private addPartial(block: number, start: number, end: number): void {
    if (this.bit(this.granuleOf(block))) return;
    const blockLen = Math.min(this.blockSize, this.diskSize - block * this.blockSize);
    const r = insertRange(this.partial.get(block) ?? [], start, end);
    if ((r[0] === 0 && r[1] === blockLen) || r.length / 2 > this.limits.maxRangesPerBlock) {
      this.partial.delete(block);
      this.markBlocks(block, block);
      return;
    }
    this.partial.set(block, r);
    if (this.partial.size > this.limits.maxPartialBlocks) {
      // Over the cap: the older half (a Map iterates in insertion order) become whole blocks.
      const keep = Math.floor(this.limits.maxPartialBlocks / 2);
      for (const b of this.partial.keys()) {
        if (this.partial.size <= keep) break;
        setBit(this.bits, this.granuleOf(b));
        this.anyBits = true;
        this.partial.delete(b);
      }
    }
  }
}

function setBit(bits: Uint8Array, g: number): void {
  bits[g >>> 3]! |= 1 << (g & 7);
}

/** Inserts [s, e) into sorted disjoint pairs, merging what overlaps or touches. */
function insertRange(r: number[], s: number, e: number): number[] {
  const out: number[] = [];
  let i = 0;
  for (; i < r.length && r[i + 1]! < s; i += 2) out.push(r[i]!, r[i + 1]!);
  for (; i < r.length && r[i]! <= e; i += 2) {
    s = Math.min(s, r[i]!);
    e = Math.max(e, r[i + 1]!);
  }
  out.push(s, e);
  for (; i < r.length; i += 2) out.push(r[i]!, r[i + 1]!);
  return out;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
