import { randomBytes } from "node:crypto";
import type { Clock } from "../base/index.js";
import type { ApiKeyRole, Database } from "./db/index.js";
import { hashSecret } from "./secrets.js";

/**
 * Web console sessions. Signing in with an API key gives a cookie whose value
 * is 256 random bits; the database keeps only its SHA-256, the key it stands
 * for and an expiry. A session has its key's role and ends when the key is
 * revoked, when it expires, or when the console signs out.
 */
export const SESSION_COOKIE = "lifeboat_session";
/** How long a sign-in lasts (absolute, not sliding). */
export const SESSION_TTL_SECONDS = 12 * 3600;

export interface SessionKey {
  id: string;
  role: ApiKeyRole;
  name: string;
}

/** Makes a session for API key `keyId`; returns the cookie value (shown once) and its expiry. */
export async function createSession(
  database: Database,
  clock: Clock,
  keyId: string,
  source: string,
): Promise<{ value: string; expiresAt: number }> {
  const value = randomBytes(32).toString("base64url");
  const now = clock.now();
  const expiresAt = now + SESSION_TTL_SECONDS * 1000;
  await database.db.deleteFrom("console_sessions").where("expires_at", "<=", now).execute();
  await database.db
    .insertInto("console_sessions")
    .values({
      token_hash: hashSecret(value),
      api_key_id: keyId,
      created_at: now,
      expires_at: expiresAt,
      source,
    })
    .execute();
  return { value, expiresAt };
}

/** The current, unrevoked API key of session cookie `value`, or undefined. */
export async function findSession(
  database: Database,
  clock: Clock,
  value: string,
): Promise<(SessionKey & { expiresAt: number }) | undefined> {
  const row = await database.db
    .selectFrom("console_sessions as s")
    .innerJoin("api_keys as k", "k.id", "s.api_key_id")
    .select(["k.id", "k.role", "k.name", "k.revoked_at", "s.expires_at"])
    .where("s.token_hash", "=", hashSecret(value))
    .executeTakeFirst();
  if (row === undefined || row.revoked_at !== null || Number(row.expires_at) <= clock.now()) return undefined;
  return { id: row.id, role: row.role, name: row.name, expiresAt: Number(row.expires_at) };
}

/** Ends the session of cookie `value` (nothing when there is none). */
export async function deleteSession(database: Database, value: string): Promise<void> {
  await database.db.deleteFrom("console_sessions").where("token_hash", "=", hashSecret(value)).execute();
}

/** The session cookie's value in a Cookie header, if any. */
export function sessionCookieOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const v = part.slice(eq + 1).trim();
    return /^[A-Za-z0-9_-]{16,128}$/.test(v) ? v : undefined;
  }
  return undefined;
}

/** Set-Cookie for a session; `maxAgeSeconds` 0 clears it. */
export function sessionCookie(value: string, maxAgeSeconds: number): string {
  return `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; HttpOnly; Secure; SameSite=Strict`;
}
