import { randomBytes } from "node:crypto";
import os from "node:os";
import { LifeboatError } from "../base/index.js";
import { ObjectKind } from "./codec.js";
import { PREFIX } from "./names.js";
import type { Repository } from "./repository.js";

/**
 * Locks coordinate writers (imports, replication sessions) with garbage
 * collection. A writer holds a lock from before it reads the PITs (to learn
 * which chunks exist) until its PIT is written; GC reads the writers'
 * `createdMs` to know which trashed objects a live writer might still
 * reference (gc.ts). A long-running writer (a replication session) should
 * end its lock and take a new one from time to time, forgetting what it knew,
 * so that GC can make progress.
 *
 * A lock is refreshed while held. It is stale when its holder is a process on
 * this host that no longer exists, or when it has not been refreshed for
 * `staleAfterMs` (another host's process that died).
 */
export interface LockRecord {
  id: string;
  kind: "writer" | "gc";
  host: string;
  pid: number;
  createdMs: number;
  refreshedMs: number;
  purpose: string;
}

export const LOCK_REFRESH_MS = 60_000;
export const LOCK_STALE_MS = 10 * 60_000;

export class RepositoryLock {
  private timer: NodeJS.Timeout | undefined;
  private released = false;

  constructor(
    private readonly repo: Repository,
    readonly record: LockRecord,
    readonly name: string = `${PREFIX.locks}${record.id}`,
  ) {}

  /** Starts refreshing in the background until released. */
  keepAlive(intervalMs = LOCK_REFRESH_MS): void {
    this.timer = setInterval(() => {
      this.refresh().catch(() => undefined);
    }, intervalMs);
    this.timer.unref();
  }

  async refresh(): Promise<void> {
    if (this.released) return;
    this.record.refreshedMs = this.repo.clock.now();
    await this.repo.putMeta(this.name, this.record);
  }

  async release(): Promise<void> {
    this.released = true;
    if (this.timer) clearInterval(this.timer);
    await this.repo.backend.delete(this.name);
  }
}

/** The one name every GC and forget run competes for, where the backend can create exclusively. */
const GC_LOCK = `${PREFIX.locks}gc`;

function locked(o: LockRecord): LifeboatError {
  return new LifeboatError(
    "STORE_LOCKED",
    `garbage collection is already running (pid ${o.pid} on ${o.host}, ${o.purpose})`,
    {
      hint: "wait for it to finish; a lock of a dead process is broken automatically",
    },
  );
}

/**
 * Takes a lock. Writer locks never exclude anything. A `gc` lock excludes
 * every other `gc` lock: where the backend can create an object exclusively
 * (putIfAbsent) every run creates the same name, `locks/gc`, and exactly one
 * succeeds; a stale holder's lock is removed and the attempt repeated once.
 * Elsewhere each run writes its own lock, lists the others and gives way to
 * an older one — which two runs starting within a listing's latency can both
 * pass, so on such backends run one GC at a time.
 */
export async function acquireLock(
  repo: Repository,
  kind: LockRecord["kind"],
  purpose: string,
): Promise<RepositoryLock> {
  const now = repo.clock.now();
  const record: LockRecord = {
    id: `${kind}-${now.toString(36)}-${randomBytes(6).toString("hex")}`,
    kind,
    host: os.hostname(),
    pid: process.pid,
    createdMs: now,
    refreshedMs: now,
    purpose,
  };
  if (kind === "gc" && repo.backend.putIfAbsent) {
    const create = repo.backend.putIfAbsent.bind(repo.backend);
    for (let attempt = 0; attempt < 2; attempt++) {
      const data = repo.codec.encode(GC_LOCK, ObjectKind.meta, Buffer.from(JSON.stringify(record)));
      if (await create(GC_LOCK, data)) return new RepositoryLock(repo, record, GC_LOCK);
      let holder: LockRecord;
      try {
        holder = await repo.getMeta<LockRecord>(GC_LOCK);
      } catch (err) {
        if (err instanceof LifeboatError && err.code === "STORE_OBJECT_MISSING") continue; // released meanwhile
        throw err;
      }
      // A retried create whose first attempt landed finds its own lock.
      if (holder.id === record.id) return new RepositoryLock(repo, record, GC_LOCK);
      if (!isStale(repo, holder)) throw locked(holder);
      await repo.backend.delete(GC_LOCK);
    }
    throw new LifeboatError(
      "STORE_LOCKED",
      "another process took the garbage-collection lock at the same moment",
      {
        hint: "try again",
      },
    );
  }
  const lock = new RepositoryLock(repo, record);
  await repo.putMeta(lock.name, record);
  if (kind === "gc") {
    const others = (await listLocks(repo)).filter(
      (l) => l.kind === "gc" && l.id !== record.id && !isStale(repo, l),
    );
    const older = others.find(
      (o) => o.createdMs < record.createdMs || (o.createdMs === record.createdMs && o.id < record.id),
    );
    if (older) {
      await lock.release();
      throw locked(older);
    }
  }
  return lock;
}

/** Every lock in the repository, with the name of its object. */
export async function listLocks(repo: Repository): Promise<(LockRecord & { name: string })[]> {
  const out: (LockRecord & { name: string })[] = [];
  for await (const o of repo.backend.list(PREFIX.locks)) {
    try {
      out.push({ ...(await repo.getMeta<LockRecord>(o.name)), name: o.name });
    } catch (err) {
      // A lock deleted between listing and reading is simply gone.
      if (!(err instanceof LifeboatError && err.code === "STORE_OBJECT_MISSING")) throw err;
    }
  }
  return out;
}

export function isStale(repo: Repository, lock: LockRecord, staleAfterMs = LOCK_STALE_MS): boolean {
  if (lock.host === os.hostname() && !processAlive(lock.pid)) return true;
  return repo.clock.now() - lock.refreshedMs > staleAfterMs;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Deletes locks whose holders are gone; returns what it removed. */
export async function breakStaleLocks(repo: Repository, staleAfterMs = LOCK_STALE_MS): Promise<LockRecord[]> {
  const stale = (await listLocks(repo)).filter((l) => isStale(repo, l, staleAfterMs));
  for (const l of stale) await repo.backend.delete(l.name);
  return stale;
}
