import { PREFIX } from "./names.js";
import { type PitDisk, validateServerName } from "./pit.js";
import type { Repository } from "./repository.js";

/**
 * A replica's head: the current state of a server's disks as a replicator has
 * applied them, between PITs. It names block maps like a PIT does, plus the
 * last sequence number of the replication stream that it contains, so that a
 * replicator that restarts resumes exactly there and acknowledges nothing it
 * could lose. A head is not a restore point (it may hold a write without the
 * writes before it); PITs are made from it at consistency points.
 *
 * GC treats heads as roots, as it does PITs. A head is replaced whole by its
 * writer, who holds a writer lock while it writes; the data it names is
 * durable before the head is written.
 */
export interface Head {
  format: 1;
  server: string;
  disks: PitDisk[];
  /** Every frame of the replication stream up to this number is in the head. */
  appliedSeq: number;
  timeMs: number;
  /** The writer's session, to tell a head it wrote from one another replicator wrote. */
  session: string;
}

export const headName = (server: string) => `${PREFIX.heads}${server}`;

/** Writes a head after everything it names is durable, and makes the head durable. */
export async function writeHead(repo: Repository, head: Omit<Head, "format">): Promise<Head> {
  validateServerName(head.server);
  const full: Head = { format: 1, ...head };
  await repo.flush();
  await repo.putMeta(headName(head.server), full);
  await repo.flush();
  return full;
}

export async function readHead(repo: Repository, server: string): Promise<Head | undefined> {
  validateServerName(server);
  if (!(await repo.backend.stat(headName(server)))) return undefined;
  return repo.getMeta<Head>(headName(server));
}

export async function listHeads(repo: Repository): Promise<Head[]> {
  const out: Head[] = [];
  for await (const o of repo.backend.list(PREFIX.heads)) out.push(await repo.getMeta<Head>(o.name));
  return out.sort((a, b) => a.server.localeCompare(b.server));
}

/** Drops a server's head (its PITs stay); what only the head referenced is then garbage. */
export async function deleteHead(repo: Repository, server: string): Promise<void> {
  validateServerName(server);
  await repo.backend.delete(headName(server));
}
