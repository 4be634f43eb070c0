import type { Clock } from "../base/index.js";
import type { ApiKeyRole, Database } from "./db/index.js";
import { httpError } from "./http-error.js";
import { issueSecret } from "./secrets.js";

/**
 * Operator API keys beyond the first admin key `server init` writes: an
 * admin makes keys of any role (a `viewer` key for Prometheus or a
 * dashboard: it reads everything an operator reads and changes nothing),
 * lists them (never their secrets; only a hash is stored) and revokes them.
 * A revoked key fails at once on every instance, and so do the console
 * sessions signed in with it.
 */
export const API_KEY_ROLES: readonly ApiKeyRole[] = ["viewer", "operator", "admin"];

export interface ApiKeyView {
  id: string;
  name: string;
  role: ApiKeyRole;
  createdAt: string;
  createdBy: string | null;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(Number(ms)).toISOString());

function view(r: {
  id: string;
  name: string;
  role: ApiKeyRole;
  created_at: number;
  created_by: string | null;
  last_used_at: number | null;
  revoked_at: number | null;
}): ApiKeyView {
  return {
    id: r.id,
    name: r.name,
    role: r.role,
    createdAt: iso(r.created_at)!,
    createdBy: r.created_by,
    lastUsedAt: iso(r.last_used_at),
    revokedAt: iso(r.revoked_at),
  };
}

/** Makes a key; the returned `key` (`<id>.<secret>`) exists nowhere else. */
export async function createApiKey(
  database: Database,
  clock: Clock,
  opts: { name: string; role: ApiKeyRole; createdBy: string },
): Promise<ApiKeyView & { key: string }> {
  const secret = issueSecret("key");
  const row = {
    id: secret.id,
    name: opts.name,
    role: opts.role,
    key_hash: secret.hash,
    created_at: clock.now(),
    created_by: opts.createdBy,
    revoked_at: null,
    last_used_at: null,
  };
  await database.db.insertInto("api_keys").values(row).execute();
  return { ...view(row), key: secret.value };
}

export async function listApiKeys(database: Database): Promise<ApiKeyView[]> {
  const rows = await database.db
    .selectFrom("api_keys")
    .select(["id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at"])
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.map(view);
}

/**
 * Revokes key `id` (again: no change). 404 APIKEY_NOT_FOUND for an unknown
 * id; 409 APIKEY_LAST_ADMIN for the last admin key still valid, which would
 * leave nobody able to make keys.
 */
export async function revokeApiKey(database: Database, clock: Clock, id: string): Promise<ApiKeyView> {
  return database.db.transaction().execute(async (trx) => {
    const row = await trx
      .selectFrom("api_keys")
      .select(["id", "name", "role", "created_at", "created_by", "last_used_at", "revoked_at"])
      .where("id", "=", id)
      .executeTakeFirst();
    if (row === undefined)
      throw httpError(404, "APIKEY_NOT_FOUND", `no API key ${id}`, "`lifeboat keys list` shows the keys");
    if (row.revoked_at !== null) return view(row);
    if (row.role === "admin") {
      const admins = await trx
        .selectFrom("api_keys")
        .select((eb) => eb.fn.countAll().as("n"))
        .where("role", "=", "admin")
        .where("revoked_at", "is", null)
        .executeTakeFirst();
      if (Number(admins?.n ?? 0) <= 1)
        throw httpError(
          409,
          "APIKEY_LAST_ADMIN",
          `API key ${id} is the last admin key; revoking it would leave nobody able to manage keys`,
          "create another admin key first (`lifeboat keys create --role admin`), then revoke this one",
        );
    }
    const now = clock.now();
    await trx.updateTable("api_keys").set({ revoked_at: now }).where("id", "=", id).execute();
    return view({ ...row, revoked_at: now });
  });
}
