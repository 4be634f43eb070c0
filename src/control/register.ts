import type { Transaction } from "kysely";
import type { Clock } from "../base/index.js";
import {
  type CaCredentials,
  type ClientRole,
  issueClientCert,
  publicKeyFingerprintOfCsr,
} from "../net/index.js";
import type { Database, InstallToken, Schema } from "./db/index.js";
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

export interface ReplicatorRegisterRequest {
  token: string;
  csr: string;
  /** Unique among replicators; the token's server name wins when it carries one. */
  name: string;
  /** host:port agents send data to. */
  address: string;
  capacity?: Record<string, unknown>;
}

export interface ReplicatorRegisterResult {
  replicatorId: string;
  replicatorName: string;
  certificatePem: string;
  caPem: string;
  tokenId: string;
  created: boolean;
}

/** What a redemption made (or found, on a retry). */
interface Subject {
  id: string;
  name: string;
}

interface Redemption {
  subject: Subject;
  certificatePem: string;
  tokenId: string;
  created: boolean;
}

const hintFor = (role: ClientRole) =>
  `ask an admin for a new install token (lifeboat token create --role ${role})`;

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
  const r = await redeem(database, ca, clock, "agent", req.token, req.csr, {
    async find(trx, id) {
      const row = await trx
        .selectFrom("servers")
        .select("name")
        .where("id", "=", id)
        .executeTakeFirstOrThrow();
      return { id, name: row.name };
    },
    async create(trx, token, now) {
      const name = token.server_name ?? req.hostname;
      const taken = await trx.selectFrom("servers").select("id").where("name", "=", name).executeTakeFirst();
      if (taken !== undefined) {
        throw httpError(
          409,
          "SERVER_NAME_TAKEN",
          `a server named ${name} is already registered`,
          "decommission or rename the old server, or create the token with --server-name",
        );
      }
      const id = newId("srv");
      await trx
        .insertInto("servers")
        .values({
          id,
          name,
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
          recovery_job_id: token.recovery_job_id,
        })
        .execute();
      return { id, name };
    },
  });
  return {
    serverId: r.subject.id,
    serverName: r.subject.name,
    certificatePem: r.certificatePem,
    caPem: ca.certPem,
    tokenId: r.tokenId,
    created: r.created,
  };
}

/**
 * Redeems a replicator install token: as registerAgent, but the record made
 * is a replicator (name, data address, capacity) and the certificate names
 * `replicator:<id>`. Errors as registerAgent's, with 409
 * REPLICATOR_NAME_TAKEN for a name in use.
 */
export async function registerReplicator(
  database: Database,
  ca: CaCredentials,
  clock: Clock,
  req: ReplicatorRegisterRequest,
): Promise<ReplicatorRegisterResult> {
  const r = await redeem(database, ca, clock, "replicator", req.token, req.csr, {
    async find(trx, id) {
      const row = await trx
        .selectFrom("replicators")
        .select("name")
        .where("id", "=", id)
        .executeTakeFirstOrThrow();
      return { id, name: row.name };
    },
    async create(trx, token, now) {
      const name = token.server_name ?? req.name;
      const taken = await trx
        .selectFrom("replicators")
        .select("id")
        .where("name", "=", name)
        .executeTakeFirst();
      if (taken !== undefined) {
        throw httpError(
          409,
          "REPLICATOR_NAME_TAKEN",
          `a replicator named ${name} is already registered`,
          "decommission the old replicator, or register this one under another name",
        );
      }
      const id = newId("rep");
      await trx
        .insertInto("replicators")
        .values({
          id,
          name,
          address: req.address,
          capacity_json: JSON.stringify(req.capacity ?? {}),
          state: "REGISTERED",
          last_seen_at: now,
          registered_at: now,
          drained: 0,
          decommissioned_at: null,
          token_id: token.id,
        })
        .execute();
      return { id, name };
    },
  });
  return {
    replicatorId: r.subject.id,
    replicatorName: r.subject.name,
    certificatePem: r.certificatePem,
    caPem: ca.certPem,
    tokenId: r.tokenId,
    created: r.created,
  };
}

/** The part of registration that differs between agents and replicators. */
interface SubjectStore {
  /** The subject a registrations row names (a retry). */
  find(trx: Transaction<Schema>, id: string): Promise<Subject>;
  /** Makes a new subject; may refuse (409) before anything is written. */
  create(trx: Transaction<Schema>, token: InstallToken, now: number): Promise<Subject>;
}

async function redeem(
  database: Database,
  ca: CaCredentials,
  clock: Clock,
  role: ClientRole,
  tokenValue: string,
  csr: string,
  store: SubjectStore,
): Promise<Redemption> {
  const hint = hintFor(role);
  const parts = splitSecret(tokenValue);
  if (parts === undefined) throw httpError(401, "TOKEN_INVALID", "the install token is malformed", hint);
  let fingerprint: string;
  try {
    fingerprint = publicKeyFingerprintOfCsr(csr);
  } catch (err) {
    throw Object.assign(
      httpError(
        400,
        "NET_CSR_INVALID",
        "body.csr: not a PEM certificate signing request",
        `send the CSR the ${role} made`,
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
      token.role !== role
    ) {
      throw httpError(401, "TOKEN_INVALID", `the install token is not a valid ${role} token`, hint);
    }
    const now = clock.now();
    if (token.revoked_at !== null)
      throw httpError(401, "TOKEN_REVOKED", `install token ${token.id} was revoked`, hint);
    if (now >= Number(token.expires_at))
      throw httpError(401, "TOKEN_EXPIRED", `install token ${token.id} has expired`, hint);

    const previous = await trx
      .selectFrom("registrations")
      .selectAll()
      .where("token_id", "=", token.id)
      .where("public_key_fingerprint", "=", fingerprint)
      .executeTakeFirst();
    let subject: Subject;
    if (previous !== undefined) {
      subject = await store.find(trx, previous.subject_id);
    } else {
      if (Number(token.uses_count) >= Number(token.uses_allowed)) {
        throw httpError(401, "TOKEN_USED", `install token ${token.id} has no uses left`, hint);
      }
      subject = await store.create(trx, token, now);
      await trx
        .updateTable("install_tokens")
        .set((eb) => ({ uses_count: eb("uses_count", "+", 1) }))
        .where("id", "=", token.id)
        .execute();
    }
    const cert = await issueClientCert(ca, csr, { role, subjectId: subject.id, clock });
    await trx
      .insertInto("certificates")
      .values({
        serial: cert.serial,
        role,
        subject_id: subject.id,
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
          subject_id: subject.id,
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
    return { subject, certificatePem: cert.certPem, tokenId: token.id, created: previous === undefined };
  });
}
