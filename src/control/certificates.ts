import type { Clock } from "../base/index.js";
import { type CaCredentials, type ClientRole, issueClientCert } from "../net/index.js";
import type { Database } from "./db/index.js";
import { httpError } from "./http-error.js";

/**
 * Client certificates after registration: renewal by the holder, revocation
 * by an admin (decommission), and the revocation list replicators fetch.
 *
 * Renewal issues a new certificate for the same identity and leaves the old
 * one valid until it expires: if the answer is lost, the agent still holds a
 * working certificate and simply renews again.
 */
export interface RenewResult {
  certificatePem: string;
  caPem: string;
  serial: string;
  notAfter: string;
}

export async function renewClientCertificate(
  database: Database,
  ca: CaCredentials,
  clock: Clock,
  who: { role: ClientRole; subjectId: string },
  csr: string,
): Promise<RenewResult> {
  const table = who.role === "agent" ? "servers" : "replicators";
  const row = await database.db
    .selectFrom(table)
    .select("decommissioned_at")
    .where("id", "=", who.subjectId)
    .executeTakeFirst();
  if (row === undefined || row.decommissioned_at !== null) {
    throw httpError(
      403,
      "CERT_RENEWAL_REFUSED",
      `${who.role} ${who.subjectId} is not registered (or was decommissioned); no certificate is issued for it`,
      "register it again with a new install token",
    );
  }
  const cert = await issueClientCert(ca, csr, { role: who.role, subjectId: who.subjectId, clock });
  await database.db
    .insertInto("certificates")
    .values({
      serial: cert.serial,
      role: who.role,
      subject_id: who.subjectId,
      public_key_fingerprint: cert.publicKeyFingerprint,
      not_before: cert.notBefore.getTime(),
      not_after: cert.notAfter.getTime(),
      revoked_at: null,
      token_id: null,
    })
    .execute();
  return {
    certificatePem: cert.certPem,
    caPem: ca.certPem,
    serial: cert.serial,
    notAfter: cert.notAfter.toISOString(),
  };
}

/**
 * Serials revoked and not yet expired, lowercase hex, sorted: what a
 * replicator needs to refuse a decommissioned agent (an expired certificate
 * is refused anyway, so the list stays short).
 */
export async function revokedSerials(database: Database, clock: Clock): Promise<string[]> {
  const rows = await database.db
    .selectFrom("certificates")
    .select("serial")
    .where("revoked_at", "is not", null)
    .where("not_after", ">", clock.now())
    .orderBy("serial")
    .execute();
  return rows.map((r) => r.serial);
}
