import { randomBytes } from "node:crypto";
import { LifeboatError } from "../base/index.js";
import {
  type ChunkIngest,
  type ChunkFrames,
  type ConsistencyLevel,
  type Head,
  type Pit,
  type Repository,
  type RepositoryLock,
  assertNotFenced,
  readEntry,
  writeHead,
  writePit,
} from "../store/index.js";
import { ChunkWrites, RECENT_CHUNKS } from "./chunk-writes.js";
import { commitDisks } from "./commit-disks.js";
import { type DiskState, type ReplicaDisk, openReplica } from "./open-replica.js";
import { PatchWrites } from "./patch-writes.js";
import { RunWrites } from "./run-writes.js";

export type { ReplicaDisk } from "./open-replica.js";

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
 * (chunk-writes.ts). Whole chunks are written by RunWrites (run-writes.ts),
 * byte ranges and patches by PatchWrites (patch-writes.ts); open-replica.ts
 * finds the state a replica starts from, and a checkpoint puts the entries
 * written into the block maps with commitDisks (commit-disks.ts).
 */
export class ReplicaApplier {
  private chain: Promise<void> = Promise.resolve();
  private checkpointing: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  private readonly writes: ChunkWrites;
  private readonly runs: RunWrites;
  private readonly patches: PatchWrites;
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
    recentChunks: number,
  ) {
    this.head = head;
    this.sessionToken = head.session;
    this.writes = new ChunkWrites(repo, ingest, recentChunks, (err) => {
      this.failure ??= err instanceof Error ? err : new Error(String(err));
    });
    const usable = (diskIndex: number) => this.usable(diskIndex);
    this.runs = new RunWrites(repo, ingest, this.writes, recentChunks, maxInFlight, usable, (step, always) =>
      this.enqueue(step, always),
    );
    this.patches = new PatchWrites(repo, this.writes, usable);
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
    const opened = await openReplica(repo, server, disks, opts);
    return new ReplicaApplier(
      repo,
      server,
      opened.disks,
      opened.ingest,
      opened.lock,
      opened.head,
      opts.maxInFlight ?? 4,
      opened.epoch,
      opts.recentChunks ?? RECENT_CHUNKS,
    );
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
  writeChunks(
    diskIndex: number,
    offset: number,
    data: Uint8Array,
    opts: { owned?: boolean; frames?: ChunkFrames } = {},
  ): Promise<void> {
    return this.runs.write(diskIndex, offset, data, opts);
  }

  /**
   * Writes an arbitrary byte range (a small write, a discard as zeros): each
   * chunk it touches is read, patched and stored again, so only the range
   * itself needs to travel. Resolves once the write is issued, like writeChunks.
   */
  writeBytes(diskIndex: number, offset: number, data: Uint8Array): Promise<void> {
    return this.patches.writeBytes(diskIndex, offset, data);
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
  patchChunk(
    diskIndex: number,
    offset: number,
    patches: { at: number; data: Uint8Array }[],
    sha256: Uint8Array,
    onPatched: (same: boolean) => void,
  ): Promise<void> {
    return this.patches.patchChunk(diskIndex, offset, patches, (id) => onPatched(id.equals(sha256)));
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
  writeKnownChunk(diskIndex: number, offset: number, id: Uint8Array): Promise<void> {
    return this.runs.writeKnown(diskIndex, offset, id);
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
    const disks = await commitDisks(this.repo, this.ingest, this.disks.values());
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

  /** The disk a write goes to, once the applier is known not to have failed. */
  private usable(diskIndex: number): DiskState {
    this.check();
    return this.disk(diskIndex);
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
