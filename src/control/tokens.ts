import type { Clock } from "../base/index.js";
import type { Database, InstallToken, InstallTokenRole } from "./db/index.js";
import { httpError } from "./http-error.js";
import { hashSecret, issueSecret, sameHash, splitSecret } from "./secrets.js";

/** Install tokens: short-lived, limited-use secrets an agent or replicator registers with. */
export const TOKEN_DEFAULT_TTL_SECONDS = 3600;
export const TOKEN_MAX_TTL_SECONDS = 24 * 3600;

export interface TokenView {
  id: string;
  role: InstallTokenRole;
  usesAllowed: number;
  usesCount: number;
  expiresAt: string;
  serverName: string | null;
  recoveryOf: string | null;
  createdBy: string;
  createdAt: string;
  revokedAt: string | null;
}

export function tokenView(t: InstallToken): TokenView {
  return {
    id: t.id,
    role: t.role,
    usesAllowed: Number(t.uses_allowed),
    usesCount: Number(t.uses_count),
    expiresAt: new Date(Number(t.expires_at)).toISOString(),
    serverName: t.server_name,
    recoveryOf: t.recovery_job_id,
    createdBy: t.created_by,
    createdAt: new Date(Number(t.created_at)).toISOString(),
    revokedAt: t.revoked_at === null ? null : new Date(Number(t.revoked_at)).toISOString(),
  };
}

/** Makes a token; the returned `token` (`<id>.<secret>`) exists nowhere else. */
export async function createToken(
  database: Database,
  clock: Clock,
  opts: {
    role: InstallTokenRole;
    uses?: number;
    ttlSeconds?: number;
    serverName?: string;
    /** A recovery job whose recovered instance's agent registers with this token (failback source). */
    recoveryOf?: string;
    createdBy: string;
  },
): Promise<TokenView & { token: string }> {
  const ttl = opts.ttlSeconds ?? TOKEN_DEFAULT_TTL_SECONDS;
  if (ttl > TOKEN_MAX_TTL_SECONDS) {
    throw httpError(
      400,
      "REQUEST_INVALID",
      `body.ttlSeconds: ${ttl} is longer than 24 hours`,
      "install tokens live at most 24 hours; make a new one when needed",
    );
  }
  if (opts.recoveryOf !== undefined) {
    const job = await database.db
      .selectFrom("jobs")
      .select(["type"])
      .where("id", "=", opts.recoveryOf)
      .executeTakeFirst();
    if (job?.type !== "recovery")
      throw httpError(
        400,
        "REQUEST_INVALID",
        `body.recoveryOf: ${opts.recoveryOf} is not a recovery job`,
        "give the id of the recovery job (`lifeboat jobs list`)",
      );
  }
  const secret = issueSecret("tok");
  const now = clock.now();
  const row: InstallToken = {
    id: secret.id,
    secret_hash: secret.hash,
    role: opts.role,
    uses_allowed: opts.uses ?? 1,
    uses_count: 0,
    expires_at: now + ttl * 1000,
    server_name: opts.serverName ?? null,
    recovery_job_id: opts.recoveryOf ?? null,
    created_by: opts.createdBy,
    created_at: now,
    revoked_at: null,
  };
  const { uses_count: _ignored, ...insert } = row;
  await database.db.insertInto("install_tokens").values(insert).execute();
  return { ...tokenView(row), token: secret.value };
}

export async function listTokens(database: Database): Promise<TokenView[]> {
  const rows = await database.db
    .selectFrom("install_tokens")
    .selectAll()
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.map(tokenView);
}

/** Revokes a token (idempotent); 404 TOKEN_NOT_FOUND for an unknown id. */
export async function revokeToken(database: Database, clock: Clock, id: string): Promise<TokenView> {
  await database.db
    .updateTable("install_tokens")
    .set({ revoked_at: clock.now() })
    .where("id", "=", id)
    .where("revoked_at", "is", null)
    .execute();
  const row = await database.db
    .selectFrom("install_tokens")
    .selectAll()
    .where("id", "=", id)
    .executeTakeFirst();
  if (row === undefined)
    throw httpError(
      404,
      "TOKEN_NOT_FOUND",
      `no install token ${id}`,
      "list tokens with `lifeboat token list`",
    );
  return tokenView(row);
}

/** What `POST /api/v1/tokens/check` may say about a token: nothing but its state. */
export type TokenState = "valid" | "expired" | "revoked" | "used" | "unknown";

/**
 * The state of an install token, read without spending it (the connectivity
 * doctor asks before `agent install`). `unknown` covers a malformed value, an
 * unknown id, a wrong secret and a token of another role alike, so the answer
 * tells a guesser nothing; the order of the other states is registration's
 * (revoked, then expired, then out of uses). `expiresAt` comes with `valid`.
 */
export async function checkToken(
  database: Database,
  clock: Clock,
  value: string,
  role: InstallTokenRole,
): Promise<{ state: TokenState; expiresAt?: number }> {
  const parts = splitSecret(value);
  if (parts === undefined) return { state: "unknown" };
  const token = await database.db
    .selectFrom("install_tokens")
    .selectAll()
    .where("id", "=", parts.id)
    .executeTakeFirst();
  if (token === undefined || !sameHash(token.secret_hash, hashSecret(parts.secret)) || token.role !== role)
    return { state: "unknown" };
  if (token.revoked_at !== null) return { state: "revoked" };
  if (clock.now() >= Number(token.expires_at)) return { state: "expired" };
  if (Number(token.uses_count) >= Number(token.uses_allowed)) return { state: "used" };
  return { state: "valid", expiresAt: Number(token.expires_at) };
}
