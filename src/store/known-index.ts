import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { ID_LEN, LEAF_ENTRY_LEN } from "./block-map.js";

/**
 * A set of fixed-size records keyed by their first 32 bytes, a SHA-256 id
 * (a chunk's leaf entry, or a page id alone), in a few large buffers
 * instead of one JS object per id: a repository of 16 M chunks would
 * otherwise need gigabytes of Map entries, strings and Buffers.
 *
 * Records live in 256 open-addressing tables (linear probing), one per
 * first byte of the id, each grown on its own by half when 80% full, so a
 * resize never copies more than 1/256 of the set. The ids are hashes
 * already: the slot is read straight from the id's bytes 1–4. An all-zero
 * id marks an empty slot; the zero id is never a record (it stands for a
 * chunk of zeros, which is never stored).
 *
 * When the tables would outgrow `memoryBytes`, they are written as they are
 * (every table at its current size) to a run file in `spillDir` and
 * emptied; the file is unlinked at once, so it vanishes when the set is
 * closed or the process dies. A lookup of a spilled id reads its probe
 * sequence back with pread, after a Bloom filter of the run (10 bits per
 * record, from bytes 5–28 of the id) has said it may be there: a miss costs
 * a disk read in under 1% of runs. Lookups stay synchronous, so a caller can
 * test and claim an id with nothing in between.
 *
 * A record is never changed once added: adding an id that is present
 * already keeps the record there (for a chunk, both locations are valid).
 * An id may then be held by several runs; every copy is a valid record.
 */
export class IdTable {
  private shards: Buffer[] = [];
  private used = new Uint32Array(SHARDS);
  private bytes = 0;
  private readonly runs: SpilledRun[] = [];
  private count = 0;
  private closed = false;

  constructor(
    readonly recordLen: number,
    private readonly opts: { memoryBytes: number; spillDir?: string },
  ) {
    if (recordLen < ID_LEN) throw new RangeError(`a record holds at least the ${ID_LEN}-byte id`);
    this.reset();
  }

  /** Records added (an id added twice counts once unless it was spilled in between). */
  get size(): number {
    return this.count;
  }

  /** Bytes of the in-memory tables and the runs' filters. */
  get memoryBytes(): number {
    return this.bytes + this.runs.reduce((n, r) => n + r.memoryBytes, 0);
  }

  /** Run files written so far. */
  get spills(): number {
    return this.runs.length;
  }

  has(id: Uint8Array): boolean {
    return this.find(id, false) !== undefined;
  }

  /** A copy of the record of `id`, or undefined. */
  get(id: Uint8Array): Buffer | undefined {
    return this.find(id, true);
  }

  /** Adds a record (its first 32 bytes are its id) unless its id is held in memory already. */
  add(record: Uint8Array): void {
    if (this.closed) throw new Error("id table: closed");
    if (record.length !== this.recordLen) throw new RangeError(`a record has ${this.recordLen} bytes`);
    const id = record.subarray(0, ID_LEN);
    if (isZero(id)) throw new RangeError("id table: the zero id is never a record");
    const s = id[0]!;
    let tab = this.shards[s]!;
    if ((this.used[s]! + 1) * 5 > (tab.length / this.recordLen) * 4) {
      const grown = growCapacity(tab.length / this.recordLen);
      if (this.bytes + (grown * this.recordLen - tab.length) > this.opts.memoryBytes) {
        this.spill();
      } else {
        this.resize(s, grown);
      }
      tab = this.shards[s]!;
    }
    const L = this.recordLen;
    const cap = tab.length / L;
    for (let i = slotOf(id, cap); ; i = i + 1 === cap ? 0 : i + 1) {
      const at = i * L;
      if (isZeroAt(tab, at)) {
        tab.set(record, at);
        this.used[s]!++;
        this.count++;
        return;
      }
      if (sameId(tab, at, id)) return;
    }
  }

  /** Every record: memory first, then each run (an id in several runs comes once per run). */
  *records(): Generator<Buffer> {
    const L = this.recordLen;
    for (const tab of this.shards) {
      for (let at = 0; at < tab.length; at += L)
        if (!isZeroAt(tab, at)) yield Buffer.from(tab.subarray(at, at + L));
    }
    for (const run of this.runs) yield* run.records(L);
  }

  /** Frees the tables and closes the run files (their space returns to the filesystem). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const r of this.runs) r.close();
    this.runs.length = 0;
    this.shards = [];
    this.bytes = 0;
  }

  private find(id: Uint8Array, copy: boolean): Buffer | undefined {
    if (id.length < ID_LEN || this.closed) return undefined;
    const tab = this.shards[id[0]!]!;
    const L = this.recordLen;
    const cap = tab.length / L;
    for (let i = slotOf(id, cap); ; i = i + 1 === cap ? 0 : i + 1) {
      const at = i * L;
      if (isZeroAt(tab, at)) break;
      if (sameId(tab, at, id)) return copy ? Buffer.from(tab.subarray(at, at + L)) : EMPTY;
    }
    // Newest run first: ids seen lately are the likeliest to come again.
    for (let r = this.runs.length - 1; r >= 0; r--) {
      const hit = this.runs[r]!.find(id, L);
      if (hit) return hit;
    }
    return undefined;
  }

  private resize(s: number, capacity: number): void {
    const L = this.recordLen;
    const old = this.shards[s]!;
    const tab = Buffer.alloc(capacity * L);
    for (let at = 0; at < old.length; at += L) {
      if (isZeroAt(old, at)) continue;
      let i = slotOf(old.subarray(at, at + ID_LEN), capacity);
      while (!isZeroAt(tab, i * L)) i = i + 1 === capacity ? 0 : i + 1;
      old.copy(tab, i * L, at, at + L);
    }
    this.bytes += tab.length - old.length;
    this.shards[s] = tab;
  }

  /** Writes every table to a new run file and starts again with small tables. */
  private spill(): void {
    const dir = this.opts.spillDir ?? os.tmpdir();
    let fd: number | undefined;
    try {
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `lifeboat-known-${process.pid}-${randomBytes(8).toString("hex")}`);
      fd = fs.openSync(file, "wx+", 0o600);
      fs.unlinkSync(file);
      this.runs.push(SpilledRun.write(fd, this.shards, this.used, this.recordLen));
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      throw new LifeboatError("STORE_IO", `writing the known-set run file in ${dir}: ${String(err)}`, {
        hint: `free space in ${dir}, or give the writer more memory for its known set`,
        cause: err,
      });
    }
    this.reset();
  }

  private reset(): void {
    // A budget smaller than the usual empty tables (a test's) starts them smaller still.
    const L = this.recordLen;
    const cap = Math.max(4, Math.min(MIN_CAPACITY, Math.floor(this.opts.memoryBytes / (SHARDS * L))));
    this.shards = Array.from({ length: SHARDS }, () => Buffer.alloc(cap * L));
    this.used = new Uint32Array(SHARDS);
    this.bytes = SHARDS * cap * L;
  }
}

const SHARDS = 256;
const MIN_CAPACITY = 16;
/** Filter bits per record of a run, and the hashes per id (bytes 5–28 of the id, 4 each). */
const FILTER_BITS = 10;
const FILTER_HASHES = 6;
/** Slots read at once from a run while probing. */
const READ_SLOTS = 64;
const EMPTY = Buffer.alloc(0);

function growCapacity(cap: number): number {
  return Math.ceil(cap * 1.5);
}

/** The home slot of an id in a table of `cap` slots (the ids are uniform: bytes 1–4 will do). */
function slotOf(id: Uint8Array, cap: number): number {
  return (((id[1]! << 24) | (id[2]! << 16) | (id[3]! << 8) | id[4]!) >>> 0) % cap;
}

function isZero(id: Uint8Array): boolean {
  for (let i = 0; i < ID_LEN; i++) if (id[i] !== 0) return false;
  return true;
}

/** Whether the slot at `at` holds `id` (compared here: a call into Buffer.compare costs more). */
function sameId(tab: Buffer, at: number, id: Uint8Array): boolean {
  for (let i = ID_LEN - 1; i >= 0; i--) if (tab[at + i] !== id[i]) return false;
  return true;
}

function isZeroAt(tab: Buffer, at: number): boolean {
  for (let i = at; i < at + ID_LEN; i++) if (tab[i] !== 0) return false;
  return true;
}

function filterBit(id: Uint8Array, k: number): number {
  const o = 5 + 4 * k;
  return ((id[o]! << 24) | (id[o + 1]! << 16) | (id[o + 2]! << 8) | id[o + 3]!) >>> 0;
}

function readFully(fd: number, buf: Buffer, length: number, position: number): void {
  for (let got = 0; got < length;) {
    const r = fs.readSync(fd, buf, got, length - got, position + got);
    if (r === 0) throw new Error("id table: a run file is shorter than written");
    got += r;
  }
}

/**
 * Tables written to a file exactly as they were in memory (shard after
 * shard), probed in place with pread, and a Bloom filter of their ids.
 */
class SpilledRun {
  private constructor(
    private readonly fd: number,
    /** Per shard: its first byte in the file and its slot count. */
    private readonly offsets: Float64Array,
    private readonly caps: Uint32Array,
    private readonly filter: Uint8Array,
    private readonly filterBits: number,
  ) {}

  static write(fd: number, shards: Buffer[], used: Uint32Array, L: number): SpilledRun {
    const offsets = new Float64Array(SHARDS);
    const caps = new Uint32Array(SHARDS);
    let records = 0;
    for (const n of used) records += n;
    const filterBits = Math.max(64, records * FILTER_BITS);
    const filter = new Uint8Array(Math.ceil(filterBits / 8));
    let pos = 0;
    for (let s = 0; s < SHARDS; s++) {
      const tab = shards[s]!;
      offsets[s] = pos;
      caps[s] = tab.length / L;
      for (let at = 0; at < tab.length; at += L) {
        if (isZeroAt(tab, at)) continue;
        for (let k = 0; k < FILTER_HASHES; k++) {
          const b = filterBit(tab.subarray(at, at + ID_LEN), k) % filterBits;
          filter[b >>> 3]! |= 1 << (b & 7);
        }
      }
      for (let done = 0; done < tab.length;)
        done += fs.writeSync(fd, tab, done, tab.length - done, pos + done);
      pos += tab.length;
    }
    return new SpilledRun(fd, offsets, caps, filter, filterBits);
  }

  get memoryBytes(): number {
    return this.filter.length + SHARDS * 12;
  }

  find(id: Uint8Array, L: number): Buffer | undefined {
    for (let k = 0; k < FILTER_HASHES; k++) {
      const b = filterBit(id, k) % this.filterBits;
      if ((this.filter[b >>> 3]! & (1 << (b & 7))) === 0) return undefined;
    }
    const s = id[0]!;
    const cap = this.caps[s]!;
    const base = this.offsets[s]!;
    const buf = Buffer.allocUnsafe(READ_SLOTS * L);
    let i = slotOf(id, cap);
    // A table is never full (at most 80%), so the probe meets an empty slot.
    for (;;) {
      const n = Math.min(READ_SLOTS, cap - i);
      readFully(this.fd, buf, n * L, base + i * L);
      for (let j = 0; j < n; j++) {
        const at = j * L;
        if (isZeroAt(buf, at)) return undefined;
        if (sameId(buf, at, id)) return Buffer.from(buf.subarray(at, at + L));
      }
      i = i + n === cap ? 0 : i + n;
    }
  }

  *records(L: number): Generator<Buffer> {
    const end = this.offsets[SHARDS - 1]! + this.caps[SHARDS - 1]! * L;
    const buf = Buffer.allocUnsafe(1024 * L);
    for (let pos = 0; pos < end;) {
      const want = Math.min(buf.length, end - pos);
      readFully(this.fd, buf, want, pos);
      for (let at = 0; at < want; at += L)
        if (!isZeroAt(buf, at)) yield Buffer.from(buf.subarray(at, at + L));
      pos += want;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Default memory for the chunks a writer knows (about 1 M chunks before it spills to disk), and for pages. */
export const DEFAULT_KNOWN_CHUNK_BYTES = 64 << 20;
export const DEFAULT_KNOWN_PAGE_BYTES = 16 << 20;

export interface KnownIdsOptions {
  /** Memory for chunk entries before they spill to run files (default 64 MiB). */
  chunkMemoryBytes?: number;
  /** Memory for page ids before they spill (default 16 MiB). */
  pageMemoryBytes?: number;
  /** Where run files go (default: the system's temporary directory); they are unlinked at once. */
  spillDir?: string;
}

/** A claim on a chunk this writer is storing: settled once by the run that claimed it. */
export interface ChunkClaim {
  readonly promise: Promise<Buffer>;
  resolve(entry: Buffer): void;
  reject(err: unknown): void;
}

/**
 * The chunks a writer may skip storing, each with its leaf entry (block-map.ts).
 * Settled entries are in an IdTable; a chunk a run of this writer is storing
 * is in a small map, as a promise of its entry, only until it is placed.
 * Moving it from the one to the other happens at once, so a lookup always
 * finds a chunk that was claimed.
 */
export class KnownChunks {
  private readonly table: IdTable;
  private readonly storing = new Map<string, Promise<Buffer>>();

  constructor(opts: { memoryBytes: number; spillDir?: string }) {
    this.table = new IdTable(LEAF_ENTRY_LEN, opts);
  }

  /** The leaf entry of a known chunk, a promise of it while this writer stores it, or undefined. */
  get(id: Uint8Array): Buffer | Promise<Buffer> | undefined {
    if (id.length !== ID_LEN) return undefined;
    return this.table.get(id) ?? (this.storing.size > 0 ? this.storing.get(latin1(id)) : undefined);
  }

  has(id: Uint8Array): boolean {
    if (id.length !== ID_LEN) return false;
    return this.table.has(id) || (this.storing.size > 0 && this.storing.has(latin1(id)));
  }

  /** Records the leaf entry of a stored chunk (one a PIT references, or one this writer placed). */
  add(entry: Uint8Array): void {
    this.table.add(entry);
  }

  /**
   * Claims a chunk that is not known (`get` just returned undefined): lookups
   * return the claim's promise until it is resolved, then its entry. A
   * rejected claim stays, so that runs waiting on it fail too.
   */
  claim(id: Uint8Array): ChunkClaim {
    const key = latin1(id);
    // (Not looked up in the table again: that could cost a read of a run file. A chunk claimed
    // although known is only stored twice, and both copies are valid.)
    if (this.storing.has(key)) throw new Error("known chunks: claiming a chunk being stored");
    let resolve!: (v: Buffer) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<Buffer>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // the run that claimed it reports the failure
    this.storing.set(key, promise);
    return {
      promise,
      resolve: (entry) => {
        this.table.add(entry);
        this.storing.delete(key);
        resolve(entry);
      },
      reject,
    };
  }

  /** Settled entries (for tests and statistics). */
  get size(): number {
    return this.table.size;
  }

  /** Bytes the settled entries take in memory, and run files written. */
  get memory(): { bytes: number; spills: number } {
    return { bytes: this.table.memoryBytes, spills: this.table.spills };
  }

  /** Every settled entry; an entry spilled more than once comes more than once. */
  entries(): Iterable<Buffer> {
    return this.table.records();
  }

  close(): void {
    this.table.close();
  }
}

/**
 * The block-map pages a writer knows are stored, by id as a latin1 string
 * (the form block-map.ts and Repository.putPage pass around).
 */
export class KnownPages {
  private readonly table: IdTable;

  constructor(opts: { memoryBytes: number; spillDir?: string }) {
    this.table = new IdTable(ID_LEN, opts);
  }

  has(key: string): boolean {
    return this.hasId(Buffer.from(key, "latin1"));
  }

  add(key: string): void {
    this.addId(Buffer.from(key, "latin1"));
  }

  hasId(id: Uint8Array): boolean {
    return this.table.has(id);
  }

  addId(id: Uint8Array): void {
    this.table.add(id);
  }

  get size(): number {
    return this.table.size;
  }

  /** Run files written so far. */
  get spills(): number {
    return this.table.spills;
  }

  ids(): Iterable<Buffer> {
    return this.table.records();
  }

  close(): void {
    this.table.close();
  }
}

/**
 * Chunks and pages already in the repository that a writer may skip storing:
 * everything the PITs it read reference, plus what it wrote itself (see
 * locks.ts for why nothing else may be trusted while GC runs). Close it to
 * free its memory and run files.
 */
export class KnownIds {
  readonly chunks: KnownChunks;
  readonly pages: KnownPages;

  constructor(opts: KnownIdsOptions = {}) {
    this.chunks = new KnownChunks({
      memoryBytes: opts.chunkMemoryBytes ?? DEFAULT_KNOWN_CHUNK_BYTES,
      ...(opts.spillDir ? { spillDir: opts.spillDir } : {}),
    });
    this.pages = new KnownPages({
      memoryBytes: opts.pageMemoryBytes ?? DEFAULT_KNOWN_PAGE_BYTES,
      ...(opts.spillDir ? { spillDir: opts.spillDir } : {}),
    });
  }

  close(): void {
    this.chunks.close();
    this.pages.close();
  }
}

function latin1(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, ID_LEN).toString("latin1");
}
