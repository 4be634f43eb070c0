import type { Clock } from "../base/index.js";
import { type CaCredentials, issueClientCert, publicKeyFingerprintOfCsr } from "../net/index.js";
import type { Database } from "./db/index.js";
import { httpError } from "./http-error.js";
import { hashSecret, newId, sameHash, splitSecret } from "./secrets.js";

export interface RegisterRequest {
  token: string;
  csr: string;
  hostname: string;
  inventory?: unknown;
}

export interface RegisterResult {
  serverId: string;
  serverName: string;
  certificatePem: string;
  caPem: string;
  tokenId: string;
  /** False for a retry with the same token and key. */
  created: boolean;
}

const TOKEN_HINT = "ask an admin for a new install token (lifeboat token create --role agent)";

/**
 * Redeems an install token for an agent: in one transaction, checks the
 * token, counts one use, creates the server, issues a client certificate for
 * the CSR's key and records it. The token row is locked first (FOR UPDATE on
 * PostgreSQL; SQLite transactions hold the write lock from BEGIN), so
 * concurrent redeems of one token are serialized and never overspend it.
 *
 * Idempotent per (token, public key): a retry finds its registrations row and
 * gets the same server and a fresh certificate, spending no use, even after
 * the token ran out (not after it expired or was revoked).
 *
 * Errors: 401 TOKEN_INVALID (unknown, malformed or wrong secret, or not an
 * agent token), TOKEN_EXPIRED, TOKEN_REVOKED, TOKEN_USED; 409
 * SERVER_NAME_TAKEN; 400 NET_CSR_INVALID.
 */
export async function registerAgent(
  database: Database,
  ca: CaCredentials,
  clock: Clock,
  req: RegisterRequest,
): Promise<RegisterResult> {
  const parts = splitSecret(req.token);
  if (parts === undefined)
    throw httpError(401, "TOKEN_INVALID", "the install token is malformed", TOKEN_HINT);
  let fingerprint: string;
  try {
    fingerprint = publicKeyFingerprintOfCsr(req.csr);
  } catch (err) {
    throw Object.assign(
      httpError(
        400,
        "NET_CSR_INVALID",
        "body.csr: not a PEM certificate signing request",
        "send the CSR the agent made",
      ),
      { cause: err },
    );
  }
  return database.db.transaction().execute(async (trx) => {
    let q = trx.selectFrom("install_tokens").selectAll().where("id", "=", parts.id);
    if (database.dialect === "postgres") q = q.forUpdate();
    const token = await q.executeTakeFirst();
    if (
      token === undefined ||
      !sameHash(token.secret_hash, hashSecret(parts.secret)) ||
      token.role !== "agent"
    ) {
      throw httpError(401, "TOKEN_INVALID", "the install token is not valid", TOKEN_HINT);
    }
    const now = clock.now();
    if (token.revoked_at !== null)
      throw httpError(401, "TOKEN_REVOKED", `install token ${token.id} was revoked`, TOKEN_HINT);
    if (now >= Number(token.expires_at))
      throw httpError(401, "TOKEN_EXPIRED", `install token ${token.id} has expired`, TOKEN_HINT);

    const previous = await trx
      .selectFrom("registrations")
      .selectAll()
      .where("token_id", "=", token.id)
      .where("public_key_fingerprint", "=", fingerprint)
      .executeTakeFirst();
    let serverId: string;
    let serverName: string;
    if (previous !== undefined) {
      serverId = previous.subject_id;
      const server = await trx
        .selectFrom("servers")
        .select("name")
        .where("id", "=", serverId)
        .executeTakeFirstOrThrow();
      serverName = server.name;
    } else {
      if (Number(token.uses_count) >= Number(token.uses_allowed)) {
        throw httpError(401, "TOKEN_USED", `install token ${token.id} has no uses left`, TOKEN_HINT);
      }
      serverName = token.server_name ?? req.hostname;
      const taken = await trx
        .selectFrom("servers")
        .select("id")
        .where("name", "=", serverName)
        .executeTakeFirst();
      if (taken !== undefined) {
        throw httpError(
          409,
          "SERVER_NAME_TAKEN",
          `a server named ${serverName} is already registered`,
          "decommission or rename the old server, or create the token with --server-name",
        );
      }
      serverId = newId("srv");
      await trx
        .updateTable("install_tokens")
        .set((eb) => ({ uses_count: eb("uses_count", "+", 1) }))
        .where("id", "=", token.id)
        .execute();
      await trx
        .insertInto("servers")
        .values({
          id: serverId,
          name: serverName,
          hostname: req.hostname,
          state: "REGISTERED",
          lag_seconds: null,
          backlog_bytes: null,
          last_seen_at: now,
          inventory_json: req.inventory === undefined ? null : JSON.stringify(req.inventory),
          replicator_id: null,
          token_id: token.id,
          registered_at: now,
          decommissioned_at: null,
        })
        .execute();
    }
    const cert = await issueClientCert(ca, req.csr, { role: "agent", subjectId: serverId, clock });
    await trx
      .insertInto("certificates")
      .values({
        serial: cert.serial,
        role: "agent",
        subject_id: serverId,
        public_key_fingerprint: cert.publicKeyFingerprint,
        not_before: cert.notBefore.getTime(),
        not_after: cert.notAfter.getTime(),
        revoked_at: null,
        token_id: token.id,
      })
      .execute();
    if (previous === undefined) {
      await trx
        .insertInto("registrations")
        .values({
          token_id: token.id,
          public_key_fingerprint: fingerprint,
          subject_id: serverId,
          certificate_serial: cert.serial,
          created_at: now,
        })
        .execute();
    } else {
      await trx
        .updateTable("registrations")
        .set({ certificate_serial: cert.serial })
        .where("token_id", "=", token.id)
        .where("public_key_fingerprint", "=", fingerprint)
        .execute();
    }
    return {
      serverId,
      serverName,
      certificatePem: cert.certPem,
      caPem: ca.certPem,
      tokenId: token.id,
      created: previous === undefined,
    };
  });
}
