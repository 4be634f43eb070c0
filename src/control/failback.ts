import type { Clock } from "../base/index.js";
import { type Repository, listPits, readHead } from "../store/index.js";
import { findServer, requestPit } from "./commands.js";
import { type Database, type Server, appendEvent } from "./db/index.js";
import { setFence } from "./generations.js";
import { httpError } from "./http-error.js";
import { createJob, logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";
import {
  type FailbackDeps,
  type FailbackDisk,
  type FailbackView,
  type Pins,
  type Progress,
  ACTIVE,
  failbackByKey,
  parse,
  serverById,
  update,
  view,
  wakeAgent,
} from "./failback-rows.js";

/**
 * Failback: after a recovery, the recovered instance's agent replicates as
 * any server does (its data lands in the repository, deduplicated against
 * the PITs it was recovered from), and the original server's agent, in
 * receive mode, makes its own disks equal to that replica, fetching only the
 * chunks that differ. It works in passes, each against a pinned state of the
 * source (its replica's head, or at cut-over its final PIT):
 *
 *  - full: the target hashes its disk range by range and gets back the
 *    chunks whose hash differs (the first pass: the original disks still hold
 *    the pre-disaster data, so little moves);
 *  - changes: the chunks that differ between the last pass's pin and this
 *    one, found by walking the two block maps (equal subtrees are skipped),
 *    so following the source costs what changed;
 *  - verify: a full pass at cut-over against the final PIT; it must find
 *    nothing to send.
 *
 * The target persists its cursor, so a broken link or a restart resumes the
 * pass where it was. `lifeboat failback cutover` asks the source for a
 * filesystem-consistent PIT (freeze, ship, thaw); once the target synced to
 * it and a verify pass found every block equal, the failback is ready: the
 * original server's disks get new generations, its fence is lifted and it
 * replicates again (sending only chunk references, since the repository holds
 * every chunk it has), while the recovered instance is fenced as failed-back.
 */

// ---- operator side ----------------------------------------------------------

/**
 * Pairs a recovered instance's server (`source`: a server, or a recovery job
 * whose recovered instance registered with a token made for it) with the
 * original server (`to`; with a recovery job, its server unless given).
 * Refuses a pairing whose disks do not fit, a source with nothing
 * replicated yet, and a server already in a failback.
 */
export async function startFailback(
  deps: FailbackDeps,
  input: { source: string; to?: string | undefined; createdBy: string },
): Promise<FailbackView> {
  const { database, clock } = deps;
  const { source, target } = await pairOf(database, input.source, input.to);
  if (source.id === target.id)
    throw httpError(
      400,
      "FAILBACK_SAME_SERVER",
      `server ${source.name} cannot fail back onto itself`,
      "name the recovered instance's server as the source and the original server with --to",
    );
  for (const s of [source, target])
    if (s.decommissioned_at !== null)
      throw httpError(409, "SERVER_DECOMMISSIONED", `server ${s.name} was decommissioned`, "");
  const busy = await database.db
    .selectFrom("failbacks")
    .select(["id"])
    .where("state", "in", [...ACTIVE])
    .where((eb) =>
      eb.or([
        eb("source_server_id", "in", [source.id, target.id]),
        eb("target_server_id", "in", [source.id, target.id]),
      ]),
    )
    .executeTakeFirst();
  if (busy)
    throw httpError(
      409,
      "FAILBACK_ACTIVE",
      `failback ${busy.id} already involves ${source.name} or ${target.name}`,
      "follow it with `lifeboat failback show`, or cancel it with `lifeboat failback cancel`",
    );
  const repo = await deps.repo();
  const sourceHead = await readHead(repo, source.name);
  if (!sourceHead || sourceHead.disks.length === 0)
    throw httpError(
      409,
      "FAILBACK_SOURCE_EMPTY",
      `server ${source.name} has replicated nothing yet`,
      "install the agent on the recovered instance and wait until `lifeboat servers show` says CONTINUOUS",
    );
  const targetDisks = await knownDisks(repo, database, target);
  const disks: FailbackDisk[] = [];
  for (const d of sourceHead.disks) {
    const t = targetDisks.find((x) => x.index === d.index);
    if (!t)
      throw httpError(
        409,
        "FAILBACK_DISK_MISSING",
        `server ${target.name} has no disk ${d.index} for disk ${d.index} of ${source.name}`,
        "fail back onto a server with as many disks, or add the disk to its agent's configuration",
      );
    if (t.sizeBytes < d.sizeBytes)
      throw httpError(
        409,
        "FAILBACK_DISK_TOO_SMALL",
        `disk ${d.index} of ${target.name} has ${t.sizeBytes} bytes; disk ${d.index} of ${source.name} needs ${d.sizeBytes}`,
        "grow the original disk first, or fail back onto another server",
      );
    disks.push({ source: d.index, target: t.index, sizeBytes: d.sizeBytes, chunkSize: d.chunkSize });
  }
  const id = newId("fb");
  const job = await createJob(database, clock, {
    type: "failback",
    serverIds: [target.id, source.id],
    params: { failbackId: id, source: source.name, target: target.name },
    createdBy: input.createdBy,
  });
  const now = clock.now();
  await database.db
    .insertInto("failbacks")
    .values({
      id,
      job_id: job.id,
      source_server_id: source.id,
      target_server_id: target.id,
      state: "syncing",
      disks_json: JSON.stringify(disks),
      pins_json: JSON.stringify({ passes: [] } satisfies Pins),
      progress_json: JSON.stringify({
        completedPass: 0,
        bytesSent: 0,
        chunksSent: 0,
        chunksCompared: 0,
      } satisfies Progress),
      cutover_pit_id: null,
      error_code: null,
      error_message: null,
      created_at: now,
      updated_at: now,
      finished_at: null,
    })
    .execute();
  await setFence(database, target.id, "receiving");
  await wakeAgent(database, clock, target.id, id);
  await logJobStep(database, clock, job.id, {
    message: `failback ${id}: ${source.name} → ${target.name}, ${disks.length} disk(s) (${disks
      .map((d) => `${d.source}→${d.target} ${d.sizeBytes} bytes`)
      .join(", ")}); waiting for the agent of ${target.name} to switch to receive mode`,
    state: "running",
  });
  await appendEvent(
    database,
    { type: "failback.started", serverId: target.id, payload: { failbackId: id, source: source.name } },
    clock,
  );
  return getFailback(database, clock, id);
}

/**
 * Asks the source for a filesystem-consistent PIT (freeze, ship, thaw); the
 * target syncs to it, verifies every block against it, and the failback is
 * then ready (state "ready").
 */
export async function requestCutover(
  deps: FailbackDeps,
  key: string,
  createdBy: string,
): Promise<FailbackView> {
  const { database, clock } = deps;
  const row = await failbackByKey(database, key);
  if (row.state !== "syncing" && row.state !== "cutover")
    throw httpError(
      409,
      "FAILBACK_NOT_ACTIVE",
      `failback ${row.id} is ${row.state}`,
      "start a new failback with `lifeboat failback start`",
    );
  const progress = parse<Progress>(row.progress_json);
  if (progress.completedPass === 0)
    throw httpError(
      409,
      "FAILBACK_NOT_SYNCED",
      `failback ${row.id} has not finished its first pass yet`,
      "wait until `lifeboat failback show` reports pass 1 complete, then cut over",
    );
  const source = await serverById(database, row.source_server_id);
  const { command, jobId } = await requestPit(database, clock, source, {
    consistency: "filesystem",
    createdBy,
  });
  const pins = parse<Pins>(row.pins_json);
  pins.cutover = { commandId: command.id, jobId, requestedAt: clock.now() };
  await update(database, clock, row.id, { state: "cutover", pins_json: JSON.stringify(pins) });
  await logJobStep(database, clock, row.job_id, {
    message: `cut-over requested: a filesystem-consistent PIT of ${source.name} (job ${jobId}); the target syncs to it and verifies every block`,
  });
  return getFailback(database, clock, row.id);
}

/** Stops a failback: the target's agent leaves receive mode and stays fenced until an operator decides. */
export async function cancelFailback(deps: FailbackDeps, key: string): Promise<FailbackView> {
  const { database, clock } = deps;
  const row = await failbackByKey(database, key);
  if (!ACTIVE.includes(row.state))
    throw httpError(409, "FAILBACK_NOT_ACTIVE", `failback ${row.id} is ${row.state}`, "");
  await update(database, clock, row.id, { state: "cancelled", finished_at: clock.now() });
  // The original server's data is now part old, part new: it stays fenced (as after the recovery).
  await setFence(database, row.target_server_id, "failed-over");
  await wakeAgent(database, clock, row.target_server_id, row.id);
  await logJobStep(database, clock, row.job_id, {
    level: "warn",
    message:
      "failback cancelled: the original server's disks are partly synced and stay fenced; start a failback again to finish it",
    state: "terminated",
  });
  return getFailback(database, clock, row.id);
}

export async function listFailbacks(database: Database, clock: Clock): Promise<FailbackView[]> {
  const rows = await database.db.selectFrom("failbacks").selectAll().orderBy("created_at", "desc").execute();
  return Promise.all(rows.map((r) => view(database, clock, r)));
}

export async function getFailback(database: Database, clock: Clock, key: string): Promise<FailbackView> {
  return view(database, clock, await failbackByKey(database, key));
}

async function knownDisks(
  repo: Repository,
  database: Database,
  server: Server,
): Promise<{ index: number; sizeBytes: number }[]> {
  const head = await readHead(repo, server.name);
  if (head) return head.disks.map((d) => ({ index: d.index, sizeBytes: d.sizeBytes }));
  const pit = await database.db
    .selectFrom("pits")
    .select("disks_json")
    .where("server_id", "=", server.id)
    .orderBy("time_ms", "desc")
    .limit(1)
    .executeTakeFirst();
  if (pit) return parse<{ index: number; sizeBytes: number }[]>(pit.disks_json);
  const latest = (await listPits(repo, { server: server.name })).at(-1);
  if (latest) return latest.disks.map((d) => ({ index: d.index, sizeBytes: d.sizeBytes }));
  throw httpError(
    409,
    "FAILBACK_TARGET_UNKNOWN",
    `nothing is known of the disks of ${server.name}`,
    "fail back onto the server the recovery was made from",
  );
}

async function pairOf(
  database: Database,
  sourceKey: string,
  toKey: string | undefined,
): Promise<{ source: Server; target: Server }> {
  const job = await database.db
    .selectFrom("jobs")
    .select(["id", "type", "server_ids_json"])
    .where("id", "=", sourceKey)
    .executeTakeFirst();
  let source: Server | undefined;
  let targetKey = toKey;
  if (job) {
    if (job.type !== "recovery")
      throw httpError(
        400,
        "FAILBACK_NOT_RECOVERY",
        `job ${job.id} is a ${job.type}, not a recovery`,
        "give a recovery job or the recovered instance's server",
      );
    source = await database.db
      .selectFrom("servers")
      .selectAll()
      .where("recovery_job_id", "=", job.id)
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (!source)
      throw httpError(
        409,
        "FAILBACK_NO_RECOVERED_AGENT",
        `no agent of job ${job.id}'s recovered instance has registered`,
        "install the agent on the recovered instance with a token from `lifeboat token create --recovery-of JOB`",
      );
    targetKey ??= (JSON.parse(job.server_ids_json) as string[])[0];
  } else source = await findServer(database, sourceKey);
  if (!source)
    throw httpError(
      404,
      "SERVER_NOT_FOUND",
      `no server or recovery job ${sourceKey}`,
      "list servers with `lifeboat servers list`",
    );
  if (targetKey === undefined)
    throw httpError(400, "FAILBACK_TARGET_REQUIRED", "name the original server with --to", "");
  const target = await findServer(database, targetKey);
  if (!target)
    throw httpError(
      404,
      "SERVER_NOT_FOUND",
      `no server ${targetKey}`,
      "list servers with `lifeboat servers list`",
    );
  return { source, target };
}
