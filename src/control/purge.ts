import { type Clock, LifeboatError } from "../base/index.js";
import { DEFAULT_RETENTION, type Repository, deleteHead, forgetPits, listPits } from "../store/index.js";
import { type Database, type FailbackState, appendEventIn } from "./db/index.js";
import { httpError } from "./http-error.js";

export interface PurgeResult {
  id: string;
  name: string;
  /** PIT objects forgotten in the repository. */
  pitsForgotten: number;
  /** Catalog rows (pits table) deleted. */
  catalogRows: number;
}

/** Jobs that may still read the server's PITs or write its disks. */
const ACTIVE_JOB_STATES = ["pending", "running"];
const ACTIVE_FAILBACK_STATES: FailbackState[] = ["syncing", "cutover"];

/**
 * Purges a decommissioned server's data: every PIT of it in the repository
 * (by its name, as PITs are named there), its replica head (every epoch), its
 * catalog rows, and appends a `server.purged` event. Only PIT and head objects
 * are deleted; the data they alone referenced is freed at the next
 * `store gc`, as after `store forget`. The server row stays (decommissioned),
 * so its name is not reused and the audit log still names it.
 *
 * Refused (HTTP 409) for a server that is not decommissioned
 * (SERVER_NOT_DECOMMISSIONED) or that a pending or running job or an
 * unfinished failback still uses (SERVER_BUSY). Returns undefined when no
 * server has that id or name. Purging twice is harmless: the second finds
 * nothing to forget.
 */
export async function purgeServer(
  database: Database,
  clock: Clock,
  repo: Repository,
  key: string,
): Promise<PurgeResult | undefined> {
  const server = await database.db
    .selectFrom("servers")
    .select(["id", "name", "decommissioned_at"])
    .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
    .executeTakeFirst();
  if (server === undefined) return undefined;
  if (server.decommissioned_at === null)
    throw httpError(
      409,
      "SERVER_NOT_DECOMMISSIONED",
      `server ${server.name} is not decommissioned; only a decommissioned server's PITs are purged`,
      `decommission it first (\`lifeboat servers decommission ${server.name} --yes\`, or \`lifeboat agent uninstall\` on it)`,
    );
  await assertIdle(database, server.id, server.name);

  const ids = (await listPits(repo, { server: server.name, damaged: [] }))
    .filter((p) => p.server === server.name)
    .map((p) => p.id);
  // Named PITs only: the policy is not consulted (forget.ts), any will do.
  const report = ids.length
    ? await forgetPits(repo, DEFAULT_RETENTION, { server: server.name, pits: ids }).catch(busyStore)
    : { forgotten: 0 };
  await deleteHead(repo, server.name);

  const catalogRows = await database.db.transaction().execute(async (trx) => {
    await appendEventIn(
      trx,
      database.dialect,
      [
        {
          type: "server.purged",
          serverId: server.id,
          payload: { name: server.name, pitsForgotten: report.forgotten },
        },
      ],
      clock,
    );
    const r = await trx
      .deleteFrom("pits")
      .where((eb) =>
        eb.or([
          eb("server_id", "=", server.id),
          ...(ids.length ? [eb("id", "in", ids)] : []),
          eb.and([eb("server_id", "is", null), eb("server_name", "=", server.name)]),
        ]),
      )
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  });
  return { id: server.id, name: server.name, pitsForgotten: report.forgotten, catalogRows };
}

/** A GC or forget holding the repository's lock: the client may try again (HTTP 409). */
function busyStore(err: unknown): never {
  if (err instanceof LifeboatError && err.code === "STORE_LOCKED")
    throw Object.assign(err, { statusCode: 409 });
  throw err;
}

async function assertIdle(database: Database, serverId: string, name: string): Promise<void> {
  const jobs = await database.db
    .selectFrom("jobs")
    .select(["id", "type", "server_ids_json"])
    .where("state", "in", ACTIVE_JOB_STATES)
    .execute();
  const job = jobs.find((j) => (JSON.parse(j.server_ids_json) as unknown[]).includes(serverId));
  const failback = await database.db
    .selectFrom("failbacks")
    .select("id")
    .where("state", "in", ACTIVE_FAILBACK_STATES)
    .where((eb) => eb.or([eb("source_server_id", "=", serverId), eb("target_server_id", "=", serverId)]))
    .executeTakeFirst();
  const busy = job ? `${job.type} job ${job.id}` : failback ? `failback ${failback.id}` : undefined;
  if (busy !== undefined)
    throw httpError(
      409,
      "SERVER_BUSY",
      `server ${name} is in use by ${busy}; its PITs are not purged while it runs`,
      "wait for it to finish (`lifeboat jobs list`) or cancel it, then purge again",
    );
}
