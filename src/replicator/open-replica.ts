/**
 * The state a replica's applier starts from (applier.ts, ReplicaApplier.open
 * says how it is chosen): the writer lock, the server's head or a new one,
 * its disks' block maps at their current sizes, and a chunk ingest that
 * knows the ids the repository holds.
 */
import {
  ChunkIngest,
  type Head,
  type KnownIds,
  type PitDisk,
  type Repository,
  type RepositoryLock,
  acquireLock,
  assertNotFenced,
  listPits,
  loadKnownIds,
  readHead,
  resizeBlockMap,
} from "../store/index.js";
import type { TrackedDisk } from "./chunk-writes.js";

export interface ReplicaDisk {
  index: number;
  sizeBytes: number;
  /** Device path or image file on the source server. */
  source: string;
}

/** One of the replica's disks as the applier holds it. */
export interface DiskState extends TrackedDisk {
  meta: ReplicaDisk;
}

/** An opened replica: the caller releases `lock` and closes `ingest`. */
export interface OpenedReplica {
  disks: Map<number, DiskState>;
  ingest: ChunkIngest;
  lock: RepositoryLock;
  head: Head;
  epoch: number;
}

/** Opens the replica of `server` with the given disks; if it fails, nothing stays held. */
export async function openReplica(
  repo: Repository,
  server: string,
  disks: ReplicaDisk[],
  opts: { packBytes?: number; epoch?: number },
): Promise<OpenedReplica> {
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
    return { disks: states, ingest, lock, head: start, epoch };
  } catch (err) {
    known?.close();
    await lock.release();
    throw err;
  }
}
