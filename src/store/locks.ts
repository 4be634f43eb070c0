import { randomBytes } from "node:crypto";
import os from "node:os";
import { LifeboatError } from "../base/index.js";
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
  ) {}

  get name(): string {
    return `${PREFIX.locks}${this.record.id}`;
  }

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
  const lock = new RepositoryLock(repo, record);
  await repo.putMeta(lock.name, record);
  if (kind === "gc") {
    const others = (await listLocks(repo)).filter(
      (l) => l.kind === "gc" && l.id !== record.id && !isStale(repo, l),
    );
    if (
      others.some(
        (o) => o.createdMs < record.createdMs || (o.createdMs === record.createdMs && o.id < record.id),
      )
    ) {
      await lock.release();
      const o = others[0]!;
      throw new LifeboatError(
        "STORE_LOCKED",
        `garbage collection is already running (pid ${o.pid} on ${o.host})`,
        {
          hint: "wait for it to finish; a lock of a dead process is broken automatically",
        },
      );
    }
  }
  return lock;
}

export async function listLocks(repo: Repository): Promise<LockRecord[]> {
  const out: LockRecord[] = [];
  for await (const o of repo.backend.list(PREFIX.locks)) {
    try {
      out.push(await repo.getMeta<LockRecord>(o.name));
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
  for (const l of stale) await repo.backend.delete(`${PREFIX.locks}${l.id}`);
  return stale;
}
