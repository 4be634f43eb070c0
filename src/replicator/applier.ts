import { randomBytes } from "node:crypto";
import { LifeboatError, settleAll } from "../base/index.js";
import {
  type BlockMapRef,
  ChunkIngest,
  type ChunkFrames,
  type ConsistencyLevel,
  type Head,
  type KnownIds,
  type Pit,
  type PitDisk,
  type Repository,
  type RepositoryLock,
  acquireLock,
  assertNotFenced,
  listPits,
  loadKnownIds,
  readEntry,
  readHead,
  resizeBlockMap,
  updateBlockMap,
  writeHead,
  writePit,
} from "../store/index.js";
import { Limiter } from "../store/limiter.js";
import {
  ChunkWrites,
  RECENT_CHUNKS,
  RECENT_CHUNKS_OF_A_RUN,
  type TrackedDisk,
  lazily,
} from "./chunk-writes.js";

export interface ReplicaDisk {
  index: number;
  sizeBytes: number;
  /** Device path or image file on the source server. */
  source: string;
}

interface DiskState extends TrackedDisk {
  meta: ReplicaDisk;
}

/**
 * Single whole chunks written at once (scattered writes, apart from runs):
 * each waits a few milliseconds to share a worker run with others (like
 * patches), so the four run slots would throttle them.
 */
const SINGLES_IN_FLIGHT = 64;

/**
 * Applies a server's replication stream to its replica in the repository:
 * whole chunks and byte ranges are written into the disks' block maps,
 * `checkpoint` makes everything applied so far durable as the server's head
 * (head.ts) together with the stream position it reached, and `makePit`
 * turns the head into a PIT at a consistency point.
 *
 * Writes may be issued without waiting (up to `maxInFlight` chunk runs are
 * hashed, compressed and encrypted at once); they take effect in the order
 * they were issued. Nothing is durable, and nothing may be acknowledged to
 * the sender, before the checkpoint that follows it has resolved. Writes
 * to single chunks (versions, contents, patches) are kept by ChunkWrites
 * (chunk-writes.ts).
 */
export class ReplicaApplier {
  private chain: Promise<void> = Promise.resolve();
  private checkpointing: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  /** Chunk runs and known-chunk writes in flight (`maxInFlight`). */
  private readonly slots: Limiter;
  /** Single whole chunks in flight (writeChunks), apart from runs: each waits a little to share a run. */
  private readonly singles = new Limiter(SINGLES_IN_FLIGHT);
  private readonly writes: ChunkWrites;
  private head: Head;
  private sessionToken: string;

  private constructor(
    readonly repo: Repository,
    readonly server: string,
    private readonly disks: Map<number, DiskState>,
    private readonly ingest: ChunkIngest,
    private readonly lock: RepositoryLock,
    head: Head,
    maxInFlight: number,
    private readonly epoch: number,
    /** Settled chunks kept in each disk's `contents` (RECENT_CHUNKS unless opened with another number). */
    private readonly recentChunks: number,
  ) {
    this.slots = new Limiter(maxInFlight);
    this.head = head;
    this.sessionToken = head.session;
    this.writes = new ChunkWrites(repo, ingest, recentChunks, (err) => {
      this.failure ??= err instanceof Error ? err : new Error(String(err));
    });
  }

  /**
   * Opens the replica of `server` with the given disks, starting from its
   * head, else its latest PIT, else empty disks. A disk whose size changed is
   * grown (new space reads as zeros) or shrunk; a disk not in the head (a
   * disk added to the server) starts empty: agents never give a retired
   * disk's index to another disk (agent/disk-set.ts). A disk of the head that `disks` does not name (one
   * the server stopped replicating) is in no later head or PIT; the PITs made
   * before keep it, and so its chunks (gc.ts marks from every PIT). Holds a
   * writer lock until closed.
   *
   * `epoch` is the writer's assignment epoch (head.ts, "Fencing"): every
   * head and PIT it writes carries it, and it is refused (STORE_HEAD_FENCED)
   * from the moment a head of a higher epoch exists, here already when one
   * does at open.
   */
  static async open(
    repo: Repository,
    server: string,
    disks: ReplicaDisk[],
    opts: { packBytes?: number; maxInFlight?: number; epoch?: number; recentChunks?: number } = {},
  ): Promise<ReplicaApplier> {
    const lock = await acquireLock(repo, "writer", `replica of ${server}`);
    lock.keepAlive();
    let known: KnownIds | undefined;
    try {
      const pits = await listPits(repo, { damaged: [] });
      const head = await readHead(repo, server);
      const epoch = opts.epoch ?? 0;
      if ((head?.epoch ?? 0) > epoch) await assertNotFenced(repo, server, epoch);
      const latest = pits.filter((p) => p.server === server).at(-1);
      const base: PitDisk[] = head?.disks ?? latest?.disks ?? [];
      known = await loadKnownIds(repo, [...pits, ...(head ? [head.disks] : [])]);
      const chunkSize = repo.config.chunkSize;
      const states = new Map<number, DiskState>();
      for (const d of disks) {
        const chunkCount = Math.ceil(d.sizeBytes / chunkSize);
        const prior = base.find((b) => b.index === d.index && b.chunkSize === chunkSize);
        const ref = prior
          ? await resizeBlockMap(repo, prior, chunkCount, known.pages)
          : await resizeBlockMap(repo, { root: null, depth: 0, chunkCount: 0 }, chunkCount, known.pages);
        states.set(d.index, {
          meta: d,
          ref,
          pending: new Map(),
          contents: new Map(),
        });
      }
      const ingest = new ChunkIngest(repo, known, opts.packBytes ? { packBytes: opts.packBytes } : {});
      const start: Head = head ?? {
        format: 1,
        server,
        disks: [],
        appliedSeq: 0,
        timeMs: repo.clock.now(),
        session: "",
      };
      return new ReplicaApplier(
        repo,
        server,
        states,
        ingest,
        lock,
        start,
        opts.maxInFlight ?? 4,
        epoch,
        opts.recentChunks ?? RECENT_CHUNKS,
      );
    } catch (err) {
      known?.close();
      await lock.release();
      throw err;
    }
  }

  /** The replication stream the durable head belongs to ("" when none yet): its resume token. */
  get session(): string {
    return this.sessionToken;
  }

  /** Names the stream that feeds the replica from now on; the next checkpoint records it in the head. */
  useSession(token: string): void {
    this.sessionToken = token;
  }

  /** The stream position the durable head contains: the sender resumes after it. */
  get appliedSeq(): number {
    return this.head.appliedSeq;
  }

  /**
   * A buffer for a run of whole chunks of `length` bytes, to fill and hand to
   * writeChunks as `owned`: one back from a worker when one fits, so that a
   * stream of runs allocates nothing per run.
   */
  runBuffer(length: number): Buffer {
    return this.ingest.takeBuffer(length);
  }

  /** A buffer for a run's ChunkFrames, to hand to writeChunks like runBuffer's (reused likewise). */
  framesBuffer(length: number): Buffer {
    return this.ingest.takeFramesBuffer(length);
  }

  /**
   * Writes whole chunks: `data` starts at a chunk boundary and holds whole
   * chunks (the disk's last chunk may be short). Resolves once the write is
   * queued; errors surface on a later call or at the checkpoint. `owned`:
   * `data` is a Buffer at the start of memory of its own (runBuffer's, or
   * not pooled) that the caller hands over and never touches again; it
   * moves to a worker without a copy.
   * `frames`: the chunks' zstd frames as received, stored as they are
   * instead of compressed again (ChunkFrames; handed over too). With
   * `inflate`, the first chunks that have a frame are not in `data` yet (a
   * worker decompresses them); the last few, kept for patches that may
   * follow, must be.
   */
  async writeChunks(
    diskIndex: number,
    offset: number,
    data: Uint8Array,
    opts: { owned?: boolean; frames?: ChunkFrames } = {},
  ): Promise<void> {
    this.check();
    const disk = this.disk(diskIndex);
    const cs = this.repo.config.chunkSize;
    const end = offset + data.length;
    if (offset % cs !== 0 || (end % cs !== 0 && end !== disk.meta.sizeBytes) || end > disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a write of ${data.length} bytes at ${offset} is not whole chunks of disk ${diskIndex}`,
        { hint: "the sender must write whole chunks here; send partial chunks as byte ranges" },
      );
    }
    if (data.length === 0) return;
    const inflate = opts.frames?.inflate ?? 0;
    const single = data.length === cs && inflate === 0;
    const slots = single ? this.singles : this.slots;
    await slots.acquire();
    // A copy of the last few chunks for patches that may follow (the buffer below is transferred).
    const keep = Math.min(this.recentChunks, RECENT_CHUNKS_OF_A_RUN, Math.ceil(data.length / cs)) * cs;
    if (inflate > Math.ceil(Math.max(0, data.length - keep) / cs)) {
      throw new Error(`internal: ${inflate} chunks of a run are left to a worker, ${keep / cs} kept`);
    }
    const kept = Buffer.from(data.subarray(Math.max(0, data.length - keep)));
    const keptFrom = data.length - kept.length;
    const length = data.length; // `data` may be `own`, detached once it moves
    const first = offset / cs;
    const count = Math.ceil(length / cs);
    let entries: Promise<Buffer[]>;
    if (single) {
      // A single chunk (a scattered write) joins the run of others that arrive within a few
      // milliseconds: two worker round trips per chunk cost the main thread more than compressing
      // it again (its frame, if it came with one, is not used then).
      entries = this.writes.encodeChunk(keptFrom === 0 ? kept : Buffer.from(data)).then((e) => [e]);
    } else {
      let own: Buffer; // moves to a worker
      if (opts.owned && Buffer.isBuffer(data) && data.byteOffset === 0) own = data;
      else {
        own = Buffer.allocUnsafeSlow(data.length);
        own.set(data);
      }
      entries = this.ingest.run(own, opts.frames);
    }
    entries.catch(() => undefined); // handled in the chain below
    const versions: number[] = new Array<number>(count);
    for (let i = 0; i < count; i++) {
      const at = i * cs;
      versions[i] = this.writes.track(
        disk,
        first + i,
        at >= keptFrom
          ? lazily(() => Promise.resolve(kept.subarray(at - keptFrom, Math.min(at + cs, length) - keptFrom)))
          : lazily(async () => this.writes.readByEntry(disk, first + i, (await entries)[i]!)),
      );
    }
    this.enqueue(
      async () => {
        for (const [i, e] of (await entries).entries()) {
          if (this.writes.settled(disk, first + i, versions[i]!, i * cs >= keptFrom))
            disk.pending.set(first + i, e);
        }
      },
      () => slots.release(),
    );
  }

  /**
   * Writes an arbitrary byte range (a small write, a discard as zeros): each
   * chunk it touches is read, patched and stored again, so only the range
   * itself needs to travel. Resolves once the write is issued, like writeChunks.
   */
  async writeBytes(diskIndex: number, offset: number, data: Uint8Array): Promise<void> {
    this.check();
    const disk = this.disk(diskIndex);
    if (offset < 0 || offset + data.length > disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a write of ${data.length} bytes at ${offset} runs past the end of disk ${diskIndex} (${disk.meta.sizeBytes} bytes)`,
        { hint: "the sender's idea of the disk size is out of date; it must report the new size first" },
      );
    }
    const cs = this.repo.config.chunkSize;
    for (let pos = offset; pos < offset + data.length;) {
      const index = Math.floor(pos / cs);
      const chunkStart = index * cs;
      const chunkLen = Math.min(cs, disk.meta.sizeBytes - chunkStart);
      const until = Math.min(chunkStart + chunkLen, offset + data.length);
      const piece = Buffer.from(data.subarray(pos - offset, until - offset)); // the caller may reuse `data`
      const at = pos - chunkStart;
      await this.writes.patchSlot();
      this.writes.issuePatch(disk, index, (content) => piece.copy(content, at), {
        whole: at === 0 && piece.length === chunkLen,
      });
      pos = until;
    }
  }

  /**
   * Applies byte ranges (`at` relative to the chunk) to the chunk at
   * `offset`, then calls `onPatched` with whether the result hashes to
   * `sha256`, the sender's hash of its block. Resolves once the patch is
   * issued: it starts from the chunk as the writes issued before it leave
   * it, but patches to other chunks, and the next messages, go on
   * meanwhile. `onPatched` runs before a checkpoint can cover the patch; if
   * it throws, the applier fails (nothing after is checkpointed).
   */
  async patchChunk(
    diskIndex: number,
    offset: number,
    patches: { at: number; data: Uint8Array }[],
    sha256: Uint8Array,
    onPatched: (same: boolean) => void,
  ): Promise<void> {
    this.check();
    const disk = this.disk(diskIndex);
    const cs = this.repo.config.chunkSize;
    const chunkLen = Math.min(cs, disk.meta.sizeBytes - offset);
    if (
      offset % cs !== 0 ||
      chunkLen <= 0 ||
      patches.some((p) => p.at < 0 || p.at + p.data.length > chunkLen)
    ) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a patch at ${offset} does not lie inside one chunk of disk ${diskIndex} (${disk.meta.sizeBytes} bytes)`,
        { hint: "the sender's idea of the disk size is out of date; it must report the new size first" },
      );
    }
    await this.writes.patchSlot();
    this.writes.issuePatch(
      disk,
      offset / cs,
      (content) => {
        for (const p of patches) content.set(p.data, p.at);
      },
      { check: (id) => onPatched(id.equals(sha256)) },
    );
  }

  /** Resolves once every write issued so far has taken effect; rejects if one failed. */
  applied(): Promise<void> {
    return this.settle();
  }

  /** The size in bytes of one of the replica's disks. */
  diskSize(diskIndex: number): number {
    return this.disk(diskIndex).meta.sizeBytes;
  }

  /** Whether the replica can reuse a stored chunk with this id (a sender may then send only the id). */
  holds(id: Uint8Array): boolean {
    return this.ingest.known.chunks.has(id);
  }

  /**
   * Writes the chunk at a chunk-aligned offset as a copy of a chunk the
   * replica already holds (see `holds`): nothing but the id travels.
   */
  async writeKnownChunk(diskIndex: number, offset: number, id: Uint8Array): Promise<void> {
    this.check();
    const disk = this.disk(diskIndex);
    const cs = this.repo.config.chunkSize;
    if (offset % cs !== 0 || offset >= disk.meta.sizeBytes) {
      throw new LifeboatError(
        "REPLICA_BAD_WRITE",
        `a chunk reference at ${offset} is not at a chunk of disk ${diskIndex}`,
        { hint: "the sender must refer to whole chunks" },
      );
    }
    const known = this.ingest.known.chunks.get(id);
    if (!known) {
      throw new LifeboatError(
        "REPLICA_UNKNOWN_CHUNK",
        `the sender referred to chunk ${Buffer.from(id).toString("hex")}, which this replica does not hold`,
        { hint: "the sender must send the chunk's bytes; it resends them after reconnecting" },
      );
    }
    await this.slots.acquire();
    const index = offset / cs;
    const v = this.writes.track(
      disk,
      index,
      lazily(async () => this.writes.readByEntry(disk, index, Buffer.from(await known))),
    );
    this.enqueue(
      async () => {
        const entry = Buffer.from(await known);
        if (this.writes.settled(disk, index, v, false)) disk.pending.set(index, entry);
      },
      () => this.slots.release(),
    );
  }

  /**
   * The SHA-256 of a chunk as applied so far, once every write issued before
   * has taken effect (the zero id for a chunk of zeros). A sender that patched
   * a chunk compares it with the hash it expects.
   */
  async chunkId(diskIndex: number, offset: number): Promise<Buffer> {
    const disk = this.disk(diskIndex);
    await this.settle();
    const index = Math.floor(offset / this.repo.config.chunkSize);
    const entry = await this.entryOf(disk, index);
    return Buffer.from(entry.subarray(0, 32));
  }

  /**
   * Makes everything applied so far durable as the server's head, recording
   * that the stream up to `seq` is in it. After it resolves the sender may
   * forget every frame up to `seq`.
   */
  checkpoint(seq: number): Promise<Head> {
    const run = this.checkpointing.then(() => this.checkpointNow(seq));
    this.checkpointing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async checkpointNow(seq: number): Promise<Head> {
    await this.settle();
    // What is applied now goes into this head; writes that arrive meanwhile wait for the next one.
    const ordered = [...this.disks.values()].sort((a, b) => a.meta.index - b.meta.index);
    for (const d of ordered) {
      d.committing = d.pending;
      d.pending = new Map();
    }
    // The packs the taken entries lie in and the block maps' new pages are stored at once: an
    // entry names its pack from the start, and nothing names a page before the head below.
    const refs = await settleAll([
      this.ingest.finish().then(() => undefined),
      ...ordered.map((d) =>
        d.committing && d.committing.size > 0
          ? updateBlockMap(this.repo, d.ref, d.committing, this.ingest.known.pages)
          : Promise.resolve(d.ref),
      ),
    ]);
    const disks: PitDisk[] = [];
    for (const [k, d] of ordered.entries()) {
      d.ref = refs[k + 1] as BlockMapRef;
      d.committing = undefined;
      disks.push({
        index: d.meta.index,
        source: d.meta.source,
        sizeBytes: d.meta.sizeBytes,
        chunkSize: this.repo.config.chunkSize,
        ...d.ref,
      });
    }
    this.head = await writeHead(this.repo, {
      server: this.server,
      disks,
      appliedSeq: seq,
      timeMs: this.repo.clock.now(),
      session: this.sessionToken || randomBytes(16).toString("hex"),
      ...(this.epoch > 0 ? { epoch: this.epoch } : {}),
    });
    return this.head;
  }

  /** Checkpoints at `seq` and records the head as a PIT of the given consistency. */
  async makePit(opts: {
    seq: number;
    consistency: ConsistencyLevel;
    timeMs?: number;
    labels?: Record<string, string>;
  }): Promise<Pit> {
    const head = await this.checkpoint(opts.seq);
    // The checkpoint was just refused if fenced; this narrows the gap to the PIT's write.
    await assertNotFenced(this.repo, this.server, this.epoch);
    return writePit(this.repo, {
      server: this.server,
      timeMs: opts.timeMs ?? this.repo.clock.now(),
      consistency: opts.consistency,
      disks: head.disks,
      labels: { madeBy: "replicator", ...opts.labels },
    });
  }

  /** Ingest statistics of this session (chunks seen, new, deduplicated, bytes stored). */
  get stats() {
    return { ...this.ingest.stats, packs: this.ingest.packs.packs };
  }

  /** Stops without a checkpoint: what was applied since the last one is not part of the head. */
  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    await Promise.all(this.writes.inFlight()); // they never reject: a failure is kept in `failure`
    await this.ingest.finish().catch(() => undefined);
    await this.ingest.close();
    await this.lock.release();
  }

  /** A chunk's leaf entry as applied so far. */
  private async entryOf(disk: DiskState, index: number): Promise<Buffer> {
    return (
      disk.pending.get(index) ?? disk.committing?.get(index) ?? (await readEntry(this.repo, disk.ref, index))
    );
  }

  private disk(index: number): DiskState {
    const d = this.disks.get(index);
    if (!d) {
      throw new LifeboatError("REPLICA_NO_SUCH_DISK", `server ${this.server} has no disk ${index}`, {
        hint: "the sender must announce every disk when the session starts",
      });
    }
    return d;
  }

  private check(): void {
    if (this.failure) throw this.failure;
  }

  /** Runs `step` after the steps before it (skipped once a write failed); `always` runs either way. */
  private enqueue(step: () => Promise<void>, always: () => void): void {
    this.chain = this.chain.then(async () => {
      try {
        if (!this.failure) await step();
      } catch (err) {
        this.failure = err instanceof Error ? err : new Error(String(err));
      } finally {
        always();
      }
    });
  }

  /** Every write issued so far has taken effect (or the applier failed: then this throws). */
  private async settle(): Promise<void> {
    await this.chain;
    // The patches issued by now; later ones (the stream goes on) belong to the next checkpoint.
    await Promise.all(this.writes.inFlight());
    this.check();
  }
}
