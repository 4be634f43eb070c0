/**
 * The applier's writes to single chunks (applier.ts): which write to a chunk
 * is its latest (versions), the chunk's bytes as that write leaves them
 * (contents, for the patches that follow), patches in flight, and the
 * batching of patched chunks into runs for the workers.
 *
 * Writes to a chunk are issued in stream order, but their entries may be
 * ready out of that order (a patch does not wait in the applier's chain):
 * each write gets a version when issued, and only an entry of the chunk's
 * latest version goes into `pending` (settled), so the writes take effect in
 * the order issued.
 */
import { createHash } from "node:crypto";
import path from "node:path";
import { LifeboatError } from "../base/index.js";
import {
  type BlockMapRef,
  type ChunkIngest,
  type Repository,
  entryId,
  entryLocation,
  isZeroId,
  readEntry,
} from "../store/index.js";

/** What the chunk writes use of one of the replica's disks. */
export interface TrackedDisk {
  meta: { sizeBytes: number };
  ref: BlockMapRef;
  /** Leaf entries written since the last checkpoint, by chunk index. */
  pending: Map<number, Buffer>;
  /** Entries a running checkpoint is putting into `ref` (newer than `ref`, older than `pending`). */
  committing?: Map<number, Buffer>;
  /**
   * The plain bytes of chunks as their latest write leaves them, by chunk
   * index, in the order written: every chunk with a write in flight (a patch
   * to it starts from these, so patches to different chunks run at once and
   * patches to one chunk follow each other), and the last few written, so
   * that a patch soon after a write does not read the chunk back (which, for
   * a chunk in a pack not stored yet, would store the pack early).
   */
  contents: Map<number, ChunkContent>;
}

interface ChunkContent {
  /** The write these are the bytes of (ChunkWrites.nextVersion: later writes have higher numbers). */
  v: number;
  /** The bytes; a write that kept no copy reads them back when asked. */
  bytes: () => Promise<Buffer>;
  /** The write has taken effect in `pending` (or lost to a later one): the entry may go. */
  done: boolean;
}

/** Settled chunks kept in each disk's `contents` (at 64 KiB, 16 MiB a disk). */
export const RECENT_CHUNKS = 256;

/**
 * Chunks of one run of whole chunks whose bytes are kept (its last ones). A
 * patch that follows a write soon mostly lands where a writer went on (the
 * end of a run); copying every chunk of the long runs of an initial sync or
 * a rescan cost the replicator's main thread more than all else it did with
 * them. A patch to an older chunk reads it back by its entry.
 */
export const RECENT_CHUNKS_OF_A_RUN = 16;

/** Patches in flight at once: each holds two copies of its chunk while a worker encodes it. */
const PATCHES_IN_FLIGHT = 64;

/** Patched chunks sent to a worker as one run at most (at 64 KiB, 2 MiB). */
const PATCH_RUN_CHUNKS = 32;

/**
 * How long a patched chunk waits for others to share its run. Patches of
 * scattered writes finish one by one (each waits for its chunk's read), and
 * a run each would cost two worker round trips per chunk on the main
 * thread; a few milliseconds are nothing against the checkpoint interval.
 */
const PATCH_RUN_WAIT_MS = 5;

/** Calls `read` once, when first asked, and remembers its promise. */
export function lazily(read: () => Promise<Buffer>): () => Promise<Buffer> {
  let p: Promise<Buffer> | undefined;
  return () => (p ??= read());
}

export class ChunkWrites {
  /** Patches issued and not done (issuePatch). */
  private readonly patches = new Set<Promise<void>>();
  private readonly patchWaiters: (() => void)[] = [];
  /** Patched chunks waiting to go to a worker as one run (encodePatched). */
  private readonly encoding: { content: Buffer; resolve(e: Buffer): void; reject(e: unknown): void }[] = [];
  private encodeTimer: NodeJS.Timeout | undefined;
  /** The version of the last write issued (track). */
  private nextVersion = 0;

  /**
   * `recentChunks`: settled chunks kept in each disk's `contents`.
   * `onFailure`: a patch failed (the applier fails: nothing after is checkpointed).
   */
  constructor(
    private readonly repo: Repository,
    private readonly ingest: ChunkIngest,
    private readonly recentChunks: number,
    private readonly onFailure: (err: unknown) => void,
  ) {}

  /** The patches issued by now, to wait for; they never reject (a failure goes to `onFailure`). */
  inFlight(): Promise<void>[] {
    return [...this.patches];
  }

  /** Waits until fewer than PATCHES_IN_FLIGHT patches are in flight. */
  async patchSlot(): Promise<void> {
    while (this.patches.size >= PATCHES_IN_FLIGHT) await new Promise<void>((r) => this.patchWaiters.push(r));
  }

  private releasePatch(): void {
    this.patchWaiters.shift()?.();
  }

  /**
   * Issues a patch of one chunk (a patch slot taken): `patch` changes the
   * chunk's bytes as the writes issued before leave them (zeros when
   * `whole`: it overwrites the chunk), then a worker encodes the result, and
   * `check` gets the result's SHA-256 (the id the worker computed) before
   * the entry can take effect. In flight until the applier's settle() sees
   * it done (inFlight).
   */
  issuePatch(
    disk: TrackedDisk,
    index: number,
    patch: (content: Buffer) => void,
    opts: { whole?: boolean; check?: (sha256: Buffer) => void },
  ): void {
    const chunkLen = Math.min(
      this.repo.config.chunkSize,
      disk.meta.sizeBytes - index * this.repo.config.chunkSize,
    );
    const base = opts.whole ? undefined : this.contentOf(disk, index);
    // A chunk read back for this patch alone is patched in place; bytes another write left are copied.
    let patched!: (b: Buffer) => void;
    let failed!: (e: unknown) => void;
    const bytes = new Promise<Buffer>((resolve, reject) => {
      patched = resolve;
      failed = reject;
    });
    bytes.catch(() => undefined); // a failure surfaces through `onFailure`
    const v = this.track(disk, index, () => bytes);
    const run = async (): Promise<void> => {
      try {
        let content: Buffer;
        if (base?.own) content = await base.bytes();
        else {
          content = Buffer.allocUnsafeSlow(chunkLen);
          if (base) (await base.bytes()).copy(content);
          else content.fill(0);
        }
        patch(content);
        patched(content);
        const entry = await this.encodeChunk(content);
        if (opts.check) {
          // An all-zero chunk has no hash in its entry (the zero id): hash its zeros here.
          const id = entryId(entry);
          opts.check(isZeroId(id) ? createHash("sha256").update(content).digest() : id);
        }
        if (this.settled(disk, index, v, true)) disk.pending.set(index, entry);
      } catch (err) {
        failed(err);
        this.onFailure(err);
      }
    };
    // Removed from `patches` in a later tick than it is added, even if it failed at once.
    const op: Promise<void> = run().finally(() => {
      this.patches.delete(op);
      this.releasePatch();
    });
    this.patches.add(op);
  }

  /**
   * Stores one chunk (copied: `content` stays with the caller) and resolves
   * to its entry. Chunks that arrive within PATCH_RUN_WAIT_MS of each other
   * (patched ones, and single whole chunks of scattered writes) go to a
   * worker as one run, so that scattered writes do not cost two round trips
   * to a worker each.
   */
  encodeChunk(content: Buffer): Promise<Buffer> {
    const cs = this.repo.config.chunkSize;
    if (content.length !== cs) {
      // A disk's short last chunk: a run of its own (a run's chunks are whole but for its last).
      const own = Buffer.allocUnsafeSlow(content.length);
      content.copy(own);
      return this.ingest.run(own).then(([entry]) => entry!);
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.encoding.push({ content, resolve, reject });
      if (this.encoding.length >= PATCH_RUN_CHUNKS) this.encodeBatch();
      else this.encodeTimer ??= setTimeout(() => this.encodeBatch(), PATCH_RUN_WAIT_MS);
    });
  }

  private encodeBatch(): void {
    if (this.encodeTimer) clearTimeout(this.encodeTimer);
    this.encodeTimer = undefined;
    const items = this.encoding.splice(0);
    if (items.length === 0) return;
    const cs = this.repo.config.chunkSize;
    const run = this.ingest.takeBuffer(items.length * cs); // moves to a worker, and comes back
    items.forEach((it, i) => it.content.copy(run, i * cs));
    this.ingest.run(run).then(
      (entries) => items.forEach((it, i) => it.resolve(entries[i]!)),
      (err: unknown) => items.forEach((it) => it.reject(err)),
    );
  }

  /**
   * Records a write to a chunk, issued now, whose bytes `bytes` gives: the
   * chunk's latest write from now on. Returns its version.
   */
  track(disk: TrackedDisk, index: number, bytes: () => Promise<Buffer>): number {
    const v = ++this.nextVersion;
    disk.contents.delete(index); // re-inserted last: the order of `contents` is the order written
    disk.contents.set(index, { v, bytes, done: false });
    return v;
  }

  /**
   * A write of version `v` to a chunk has its entry: whether it is still the
   * chunk's latest write (its entry then goes into `pending`). The chunk's
   * bytes stay in `contents` (among the last few) if `keep`, else they go:
   * a later patch reads the chunk by its entry.
   */
  settled(disk: TrackedDisk, index: number, v: number, keep: boolean): boolean {
    const c = disk.contents.get(index);
    if (c?.v !== v) return false;
    c.done = true;
    if (!keep) disk.contents.delete(index);
    else if (disk.contents.size > this.recentChunks) {
      // The oldest settled chunks go; chunks with a write in flight stay whatever their age.
      for (const [i, old] of disk.contents) {
        if (disk.contents.size <= this.recentChunks) break;
        if (old.done) disk.contents.delete(i);
      }
    }
    return true;
  }

  /**
   * The bytes of a chunk as every write issued so far leaves it, taken now
   * and read when asked (a write issued later does not change them); `own`
   * when they were read back for the caller alone, who may change them.
   */
  private contentOf(disk: TrackedDisk, index: number): { bytes: () => Promise<Buffer>; own: boolean } {
    const c = disk.contents.get(index);
    if (c) return { bytes: c.bytes, own: false };
    // No write to it in flight: its entry is the one applied last.
    const applied = disk.pending.get(index) ?? disk.committing?.get(index);
    const read = (applied ? Promise.resolve(applied) : readEntry(this.repo, disk.ref, index)).then((e) =>
      this.readByEntry(disk, index, e),
    );
    read.catch(() => undefined); // surfaces where it is awaited
    return { bytes: () => read, own: true };
  }

  /** The bytes of the chunk that `entry` names. */
  async readByEntry(disk: TrackedDisk, index: number, entry: Buffer): Promise<Buffer> {
    const cs = this.repo.config.chunkSize;
    if (isZeroId(entry)) return Buffer.alloc(Math.min(cs, disk.meta.sizeBytes - index * cs));
    // A chunk written since the last checkpoint may sit in a pack not stored yet.
    if (this.ingest.packs.holds(entryLocation(entry).pack)) await this.ingest.finish();
    // Read (from a local repository), decrypted, decompressed and checked against its id on a
    // worker, not on the main thread.
    const id = entryId(entry);
    const name = this.repo.chunkName(id);
    const loc = entryLocation(entry);
    const root = this.repo.backend.properties.localRoot;
    if (root) {
      const file = {
        path: path.join(root, this.repo.packName(loc.pack)),
        offset: loc.offset,
        length: loc.length,
      };
      try {
        return await this.ingest.pool.decodeFrom(file, name, id);
      } catch (err) {
        // The worker could not read the file (a pack that GC moved to the trash meanwhile, or a
        // passing error): the repository reads it, from the trash if need be, with its retries.
        // Damage is damage wherever it was read.
        if (err instanceof LifeboatError || typeof (err as NodeJS.ErrnoException).code !== "string")
          throw err;
      }
    }
    return this.ingest.pool.decode(name, id, await this.repo.getChunkObject(loc));
  }
}
