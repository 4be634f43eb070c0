import type { FastifyReply, FastifyRequest } from "fastify";
import type { TLSSocket } from "node:tls";
import type { Clock } from "../base/index.js";
import { type ClientRole, verifyClientCertificate } from "../net/index.js";
import { type ApiKeyRole, type Database } from "./db/index.js";
import { httpError } from "./http-error.js";
import { hashSecret, splitSecret } from "./secrets.js";
import { findSession, sessionCookieOf } from "./sessions.js";

/**
 * Who is asking. Operators come with `Authorization: Bearer <API key>` or the
 * web console's session cookie (sessions.ts; `session` set, the key's role);
 * agents and replicators with a client certificate on the TLS connection.
 */
export type Actor =
  | { kind: "apikey"; id: string; role: ApiKeyRole; name: string; session?: boolean }
  | { kind: "client"; role: ClientRole; subjectId: string; serial: string }
  | { kind: "anonymous" };

declare module "fastify" {
  interface FastifyRequest {
    actor: Actor;
  }
}

export function actorName(actor: Actor): string {
  switch (actor.kind) {
    case "apikey":
      return `apikey:${actor.id}`;
    case "client":
      return `${actor.role}:${actor.subjectId}`;
    default:
      return "anonymous";
  }
}

/** admin > operator > viewer: a route names the least role it needs. Viewers never change state. */
const RANK: Record<ApiKeyRole, number> = { viewer: 0, operator: 1, admin: 2 };

/**
 * onRequest hook: the request carries a current API key of at least `least`.
 * 401 AUTH_REQUIRED (none), 401 AUTH_INVALID (unknown or revoked key),
 * 403 AUTH_FORBIDDEN (role too low). It runs as an onRequest hook, so a
 * refused request's body is never read.
 */
export function requireOperator(database: Database, clock: Clock, least: ApiKeyRole) {
  return async (request: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    await authenticateOperator(request, database, clock);
    const actor = request.actor;
    if (actor.kind !== "apikey")
      throw httpError(401, "AUTH_REQUIRED", "this route needs an API key", BEARER_HINT);
    if (actor.role === "viewer" && STATE_CHANGING.has(request.method) && !viewerMayWrite(request)) {
      throw httpError(
        403,
        "AUTH_FORBIDDEN",
        `API key ${actor.id} is a viewer key: it reads, and changes nothing`,
        "use an operator or admin key for this",
      );
    }
    if (RANK[actor.role] < RANK[least]) {
      throw httpError(
        403,
        "AUTH_FORBIDDEN",
        `API key ${actor.id} has role ${actor.role}; this needs ${least}`,
        "use a key with a higher role",
      );
    }
  };
}

/**
 * The state-changing routes a viewer key may use: only ending its own console
 * session. Every other POST, PUT, PATCH and DELETE refuses a viewer even when
 * its route asks for no more than "viewer", so that a route added with the
 * wrong role still cannot be used to change anything with a read-only key.
 */
const VIEWER_WRITES: ReadonlySet<string> = new Set(["DELETE /api/v1/session"]);

function viewerMayWrite(request: FastifyRequest): boolean {
  return VIEWER_WRITES.has(`${request.method} ${request.routeOptions.url ?? ""}`);
}

const BEARER_HINT = "send `Authorization: Bearer <key>` (lifeboat ... --api-key-file F)";

async function authenticateOperator(
  request: FastifyRequest,
  database: Database,
  clock: Clock,
): Promise<void> {
  const header = request.headers.authorization;
  if (header === undefined) {
    const cookie = sessionCookieOf(request.headers.cookie);
    if (cookie !== undefined) return authenticateSession(request, database, clock, cookie);
    throw httpError(401, "AUTH_REQUIRED", "this route needs an API key", BEARER_HINT);
  }
  const m = /^Bearer\s+(\S+)$/i.exec(header);
  const row = m ? await findApiKey(database, m[1]!) : undefined;
  if (row === undefined) {
    throw httpError(
      401,
      "AUTH_INVALID",
      "the API key is unknown, malformed or revoked",
      "ask an admin for a current key",
    );
  }
  request.actor = { kind: "apikey", id: row.id, role: row.role, name: row.name };
  await database.db
    .updateTable("api_keys")
    .set({ last_used_at: clock.now() })
    .where("id", "=", row.id)
    .execute();
}

/** The current (unrevoked) API key whose full value is `key`, or undefined. */
export async function findApiKey(
  database: Database,
  key: string,
): Promise<{ id: string; role: ApiKeyRole; name: string } | undefined> {
  const parts = splitSecret(key);
  if (parts === undefined) return undefined;
  const row = await database.db
    .selectFrom("api_keys")
    .select(["id", "role", "name", "revoked_at"])
    .where("key_hash", "=", hashSecret(parts.secret))
    .executeTakeFirst();
  if (row === undefined || row.id !== parts.id || row.revoked_at !== null) return undefined;
  return { id: row.id, role: row.role, name: row.name };
}

const STATE_CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
/** The header a console request carries on every state-changing call (a page of another origin cannot set it without CORS, which this server never allows). */
export const CSRF_HEADER = "x-lifeboat-csrf";

/**
 * Cross-site request forgery: a cookie goes with any request the browser
 * sends, even one another site's page made. A state-changing request
 * authenticated by cookie must carry CSRF_HEADER (a cross-origin page cannot
 * add a custom header without a CORS preflight this server refuses) and, when
 * the browser sends an Origin, one naming this host. 403 AUTH_CSRF otherwise.
 */
export function checkCsrf(request: FastifyRequest): void {
  if (!STATE_CHANGING.has(request.method)) return;
  if (request.headers[CSRF_HEADER] !== "1")
    throw httpError(
      403,
      "AUTH_CSRF",
      `a state-changing request signed in by cookie must carry the header X-Lifeboat-CSRF: 1`,
      "use the console, or send the API key as `Authorization: Bearer` instead of the cookie",
    );
  const origin = request.headers.origin;
  if (origin === undefined) return;
  let host: string | undefined;
  try {
    host = new URL(origin).host;
  } catch {
    host = undefined;
  }
  if (host === undefined || host !== request.headers.host)
    throw httpError(
      403,
      "AUTH_CSRF",
      `the request came from origin ${origin}, not from this server's console`,
      "open the console at this server's own address",
    );
}

async function authenticateSession(
  request: FastifyRequest,
  database: Database,
  clock: Clock,
  cookie: string,
): Promise<void> {
  const key = await findSession(database, clock, cookie);
  if (key === undefined)
    throw httpError(
      401,
      "AUTH_SESSION_EXPIRED",
      "the console session is unknown, expired or its API key was revoked",
      "sign in again",
    );
  checkCsrf(request);
  request.actor = { kind: "apikey", id: key.id, role: key.role, name: key.name, session: true };
}

/** True when the certificates table says `serial` was revoked (or does not know it). */
export async function isRevoked(database: Database, serial: string): Promise<boolean> {
  const row = await database.db
    .selectFrom("certificates")
    .select("revoked_at")
    .where("serial", "=", serial)
    .executeTakeFirst();
  return row === undefined || row.revoked_at !== null;
}

/** onRequest hook: a valid, current, unrevoked client certificate of `role` (401/403 otherwise). */
export function requireClient(
  database: Database,
  clock: Clock,
  caPem: string,
  role: ClientRole | readonly ClientRole[],
) {
  const roles = typeof role === "string" ? [role] : role;
  return (request: FastifyRequest): Promise<void> =>
    authenticateClient(request, database, clock, caPem, roles);
}

async function authenticateClient(
  request: FastifyRequest,
  database: Database,
  clock: Clock,
  caPem: string,
  roles: readonly ClientRole[],
): Promise<void> {
  const socket = request.raw.socket as TLSSocket;
  if (typeof socket.getPeerCertificate !== "function") {
    throw httpError(
      401,
      "NET_CLIENT_CERT_REQUIRED",
      "this route needs a client certificate over TLS",
      "connect over HTTPS with the agent's certificate",
    );
  }
  const identity = await verifyClientCertificate(socket, {
    caPem,
    clock,
    isRevoked: (s) => isRevoked(database, s),
  });
  if (!roles.includes(identity.role)) {
    throw httpError(
      403,
      "AUTH_FORBIDDEN",
      `a ${identity.role} certificate cannot use this route`,
      "use the right identity",
    );
  }
  request.actor = {
    kind: "client",
    role: identity.role,
    subjectId: identity.subjectId,
    serial: identity.serial,
  };
}

/** onRequest hook: an API key of any role, or an agent certificate. */
export function requireOperatorOrAgent(database: Database, clock: Clock, caPem: string) {
  return requireOperatorOrClient(database, clock, caPem, ["agent"]);
}

/**
 * onRequest hook: an API key of any role, or a client certificate of one of
 * `roles`. What a client may then see is the route's business (an agent its
 * own server, a replicator the servers assigned to it).
 */
export function requireOperatorOrClient(
  database: Database,
  clock: Clock,
  caPem: string,
  roles: readonly ClientRole[],
) {
  const operator = requireOperator(database, clock, "viewer");
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (request.headers.authorization !== undefined || sessionCookieOf(request.headers.cookie) !== undefined)
      return operator(request, reply);
    const socket = request.raw.socket as TLSSocket;
    const hasCert =
      typeof socket.getPeerCertificate === "function" &&
      Object.keys(socket.getPeerCertificate() ?? {}).length > 0;
    if (hasCert) return authenticateClient(request, database, clock, caPem, roles);
    throw httpError(
      401,
      "AUTH_REQUIRED",
      `this route needs an API key or a client certificate (${roles.join(" or ")})`,
      BEARER_HINT,
    );
  };
}
