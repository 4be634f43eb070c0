import { randomBytes } from "node:crypto";
import { type Clock, LifeboatError } from "../base/index.js";
import { type Database, appendEvent } from "./db/index.js";

/**
 * Split-brain safety. Every disk of a server has a generation id that
 * changes at every recovery and failback: the agent keeps the one it last
 * replicated with and names it in its HELLO, and the replicator refuses a
 * stream whose generation is not the current one. A server is also fenced
 * while its data lives elsewhere: "failed-over" after a recovery (its old
 * agent must not overwrite the replica of what the recovered instance now
 * runs), "receiving" while a failback writes its disks, and "failed-back" for
 * a recovered instance once the original server took over again. A fenced
 * server's agent does not replicate (its settings say so) and a stream from it
 * is refused with an event; nothing is merged automatically.
 */
export type FenceReason = "failed-over" | "receiving" | "failed-back";

export interface DiskGenerationView {
  index: number;
  generation: string;
}

export function newGeneration(): string {
  return randomBytes(12).toString("base64url");
}

export async function diskGenerations(database: Database, serverId: string): Promise<DiskGenerationView[]> {
  const rows = await database.db
    .selectFrom("disk_generations")
    .select(["disk_index", "generation"])
    .where("server_id", "=", serverId)
    .orderBy("disk_index")
    .execute();
  return rows.map((r) => ({ index: Number(r.disk_index), generation: r.generation }));
}

/** Gives each of the server's disks (those known, and `indexes`) a new generation id. */
export async function renewGenerations(
  database: Database,
  clock: Clock,
  serverId: string,
  indexes: number[],
  reason: string,
): Promise<DiskGenerationView[]> {
  const known = (await diskGenerations(database, serverId)).map((g) => g.index);
  const all = [...new Set([...known, ...indexes])].sort((a, b) => a - b);
  const now = clock.now();
  await database.db.transaction().execute(async (trx) => {
    await trx.deleteFrom("disk_generations").where("server_id", "=", serverId).execute();
    if (all.length > 0)
      await trx
        .insertInto("disk_generations")
        .values(
          all.map((i) => ({
            server_id: serverId,
            disk_index: i,
            generation: newGeneration(),
            changed_at: now,
            reason,
          })),
        )
        .execute();
  });
  return diskGenerations(database, serverId);
}

export async function setFence(
  database: Database,
  serverId: string,
  fence: FenceReason | null,
): Promise<void> {
  await database.db.updateTable("servers").set({ fenced: fence }).where("id", "=", serverId).execute();
}

/**
 * After a recovery job: the server's data now lives on the recovered
 * instance. Its disks get new generations and the server is fenced, so its
 * old agent, if it comes back, is refused instead of overwriting anything.
 */
export async function fenceAfterRecovery(
  database: Database,
  clock: Clock,
  serverId: string,
  jobId: string,
  diskIndexes: number[],
): Promise<void> {
  await renewGenerations(database, clock, serverId, diskIndexes, `recovery job ${jobId}`);
  await setFence(database, serverId, "failed-over");
  await appendEvent(database, { type: "server.failed_over", serverId, payload: { jobId } }, clock);
}

/**
 * Decides whether a connecting agent may stream: refuses a fenced server and
 * a disk whose generation is not the current one (raising
 * `server.split_brain`), and records a first generation for disks that have
 * none. `claimed` is what the HELLO names (absent: an agent that has not
 * learnt its generations yet, which is accepted unless the server is fenced).
 */
export async function admitStream(
  database: Database,
  clock: Clock,
  serverId: string,
  disks: number[],
  claimed: DiskGenerationView[] | undefined,
): Promise<void> {
  const server = await database.db
    .selectFrom("servers")
    .select(["name", "fenced"])
    .where("id", "=", serverId)
    .executeTakeFirst();
  if (!server) return;
  if (server.fenced !== null) {
    await splitBrain(database, clock, serverId, { fenced: server.fenced });
    throw new LifeboatError("SOURCE_FENCED", fenceMessage(server.name, server.fenced), {
      hint: fenceHint(server.fenced),
      retryable: false,
    });
  }
  const current = new Map((await diskGenerations(database, serverId)).map((g) => [g.index, g.generation]));
  for (const c of claimed ?? []) {
    const now = current.get(c.index);
    if (now !== undefined && now !== c.generation) {
      await splitBrain(database, clock, serverId, { disk: c.index, claimed: c.generation, current: now });
      throw new LifeboatError(
        "GENERATION_MISMATCH",
        `disk ${c.index} of server ${server.name} holds generation ${c.generation}, but the current one is ${now}: its data is older than a recovery or failback`,
        {
          hint: "nothing was written. If this server's data is the one to keep, fail back onto it (`lifeboat failback start`); otherwise reinstall its agent",
          retryable: false,
        },
      );
    }
  }
  const missing = disks.filter((i) => !current.has(i));
  if (missing.length > 0) {
    await database.db
      .insertInto("disk_generations")
      .values(
        missing.map((i) => ({
          server_id: serverId,
          disk_index: i,
          generation: newGeneration(),
          changed_at: clock.now(),
          reason: "first replication",
        })),
      )
      .onConflict((oc) => oc.columns(["server_id", "disk_index"]).doNothing())
      .execute();
  }
}

function fenceMessage(name: string, fence: string): string {
  if (fence === "failed-over")
    return `server ${name} was recovered elsewhere; its old disks may not replicate over the recovered data`;
  if (fence === "receiving") return `server ${name} is receiving a failback; it does not replicate meanwhile`;
  return `server ${name} is a recovered instance whose failback completed; the original server replicates again`;
}

function fenceHint(fence: string): string {
  if (fence === "failed-over")
    return "nothing was written. To move back to this server, run `lifeboat failback start`; if this server's data is the one to keep, see docs/failback.md (split brain)";
  if (fence === "receiving") return "the agent replicates again when the failback completes";
  return "shut this recovered instance down: the original server runs the workload again";
}

async function splitBrain(
  database: Database,
  clock: Clock,
  serverId: string,
  payload: object,
): Promise<void> {
  // One event a minute per server: an agent retrying must not flood the event log.
  const since = clock.now() - 60_000;
  const recent = await database.db
    .selectFrom("events")
    .select("seq")
    .where("type", "=", "server.split_brain")
    .where("server_id", "=", serverId)
    .where("at", ">", since)
    .executeTakeFirst();
  if (!recent) await appendEvent(database, { type: "server.split_brain", serverId, payload }, clock);
}
