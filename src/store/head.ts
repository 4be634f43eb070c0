import { LifeboatError } from "../base/index.js";
import { ObjectKind } from "./codec.js";
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
 *
 * Fencing. Several replicators write one repository, and a replicator that
 * was paused or cut off may wake up still holding a stream whose server was
 * given to another one meanwhile. Each writer therefore has an epoch (the
 * control plane raises a server's epoch whenever another replicator takes
 * the server's stream) and writes its head under a name of its own,
 * `heads/SERVER@EPOCH` (epoch 0, a writer without one: `heads/SERVER`).
 * Readers take the highest epoch present, so a stale writer's late write
 * lands in an object nobody reads, whatever its timing: the backends have no
 * conditional replace, and a check before the write alone could be
 * overtaken by a pause between the two. The check is still made, so that a
 * stale writer learns it is fenced (STORE_HEAD_FENCED) and drops its stream;
 * the writer of a higher epoch deletes the lower versions after its own is
 * durable.
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
  /** The writer's assignment epoch (0 or absent: a writer without one). */
  epoch?: number;
}

export const headName = (server: string, epoch = 0) =>
  epoch > 0 ? `${PREFIX.heads}${server}@${epoch}` : `${PREFIX.heads}${server}`;

/** The stored versions of a server's head, by epoch, lowest first. */
async function headVersions(repo: Repository, server: string): Promise<{ name: string; epoch: number }[]> {
  const base = headName(server);
  const out: { name: string; epoch: number }[] = [];
  for await (const o of repo.backend.list(base)) {
    const rest = o.name.slice(base.length);
    const m = /^@([1-9][0-9]*)$/.exec(rest);
    if (rest === "") out.push({ name: o.name, epoch: 0 });
    else if (m) out.push({ name: o.name, epoch: Number(m[1]) });
  }
  return out.sort((a, b) => a.epoch - b.epoch);
}

/** The highest epoch a head of `server` was written with (0 when none, or none with an epoch). */
export async function headEpoch(repo: Repository, server: string): Promise<number> {
  validateServerName(server);
  return (await headVersions(repo, server)).at(-1)?.epoch ?? 0;
}

function fenced(server: string, epoch: number, newer: number): LifeboatError {
  return new LifeboatError(
    "STORE_HEAD_FENCED",
    `the replica of server ${server} was taken over (epoch ${newer}); this writer's epoch ${epoch} may no longer write its head or PITs`,
    {
      hint: "nothing to do: the stream is dropped here and its agent sends to the replicator the server is assigned to now",
      retryable: true,
    },
  );
}

/** Throws STORE_HEAD_FENCED when a head of a higher epoch than `epoch` exists. */
export async function assertNotFenced(repo: Repository, server: string, epoch: number): Promise<void> {
  const newest = await headEpoch(repo, server);
  if (newest > epoch) throw fenced(server, epoch, newest);
}

/**
 * Writes a head after everything it names is durable, and makes the head
 * durable; refused (STORE_HEAD_FENCED) when a head of a higher epoch exists.
 * Once it is durable, versions of lower epochs are deleted.
 */
export async function writeHead(repo: Repository, head: Omit<Head, "format">): Promise<Head> {
  validateServerName(head.server);
  const epoch = head.epoch ?? 0;
  const full: Head = { format: 1, ...head, ...(epoch > 0 ? { epoch } : {}) };
  const versions = await headVersions(repo, head.server);
  const newest = versions.at(-1)?.epoch ?? 0;
  if (newest > epoch) throw fenced(head.server, epoch, newest);
  await repo.flush(); // what the head refers to is durable before the head names it
  // The head itself: its own file and directory synced, not the whole filesystem again (a
  // checkpoint waited for a second syncfs, which also waits for the next one's pack writes).
  await repo.putMeta(headName(head.server, epoch), full, ObjectKind.meta, { durable: true });
  for (const v of versions) if (v.epoch < epoch) await repo.backend.delete(v.name);
  return full;
}

/** The server's current head: the one of the highest epoch. */
export async function readHead(repo: Repository, server: string): Promise<Head | undefined> {
  validateServerName(server);
  const newest = (await headVersions(repo, server)).at(-1);
  if (!newest) return undefined;
  return withEpoch(await repo.getMeta<Head>(newest.name), newest.epoch);
}

/** Every server's current head (the highest epoch of each), by server name. */
export async function listHeads(repo: Repository): Promise<Head[]> {
  const newest = new Map<string, { name: string; epoch: number }>();
  for await (const o of repo.backend.list(PREFIX.heads)) {
    const m = /^([^@]+)(?:@([1-9][0-9]*))?$/.exec(o.name.slice(PREFIX.heads.length));
    if (!m) continue;
    const epoch = m[2] ? Number(m[2]) : 0;
    const had = newest.get(m[1]!);
    if (!had || had.epoch < epoch) newest.set(m[1]!, { name: o.name, epoch });
  }
  const out: Head[] = [];
  for (const v of newest.values()) out.push(withEpoch(await repo.getMeta<Head>(v.name), v.epoch));
  return out.sort((a, b) => a.server.localeCompare(b.server));
}

/** Drops a server's head, every epoch of it (its PITs stay); what only the head referenced is then garbage. */
export async function deleteHead(repo: Repository, server: string): Promise<void> {
  validateServerName(server);
  for (const v of await headVersions(repo, server)) await repo.backend.delete(v.name);
}

function withEpoch(head: Head, epoch: number): Head {
  return epoch > 0 ? { ...head, epoch } : head;
}
