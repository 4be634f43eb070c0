import { createHash } from "node:crypto";
import type { Clock } from "../base/index.js";
import { type AuditRecord, type Database, lockForAppend } from "./db/index.js";

/**
 * The audit log: every state-changing request, append only, hash-chained.
 *
 * Record n stores prev_hash = hash of record n-1 (GENESIS_HASH for record 1)
 * and hash = SHA-256 over a version tag, prev_hash and a canonical encoding of
 * its own fields (auditHash below). So a changed field breaks the record's own
 * hash, a deleted record leaves a gap in seq, and a record changed and rehashed
 * (or moved) no longer matches the prev_hash of the record after it.
 *
 * What the chain cannot show by itself: records cut off the end, or a whole
 * chain rewritten from some record on by someone with write access. Against
 * that, keep the head ({seq, hash} from verifyAudit) somewhere else now and
 * then (logs shipped off the host, a ticket) and pass it back as an anchor.
 *
 * Secrets: details are stored as they are and shown to every admin, so callers
 * pass redacted data (no tokens, keys, passwords, Authorization headers, not
 * even under innocent names). appendAudit also runs details through redact()
 * as a second line of defence; it cannot see a secret under a harmless key,
 * nor one in actor, target or source.
 */

export const GENESIS_HASH = "0".repeat(64);
const HASH_VERSION = "lifeboat-audit/1";

export type AuditResult = "ok" | "denied" | "failed" | (string & {});

export interface AuditEntry {
  /** Who: "apikey:<id>", "agent:<server id>", "system", ... */
  actor: string;
  /** What, as a verb: "token.create", "server.decommission", "job.launch", ... */
  action: string;
  /** On what: an id or name ("server:srv_...", "token:tok_..."), or "" if none. */
  target: string;
  /** From where: the client address, or "cli" / "scheduler". */
  source: string;
  result: AuditResult;
  /** Anything else worth keeping, already redacted. Stored as canonical JSON. */
  details?: Record<string, unknown>;
}

/**
 * Appends one record as seq = last + 1 in a single transaction. Concurrent
 * appends, from one process or many, are serialized by the append lock
 * (pg_advisory_xact_lock on PostgreSQL, the IMMEDIATE write transaction on
 * SQLite), so the chain never forks and seq has no gaps.
 */
export async function appendAudit(database: Database, entry: AuditEntry, clock: Clock): Promise<AuditRecord> {
  const details_json = canonicalJson(redact(entry.details ?? {}));
  return database.db.transaction().execute(async (trx) => {
    await lockForAppend(trx, database.dialect, "audit_log");
    const last = await trx
      .selectFrom("audit_log")
      .select(["seq", "hash"])
      .orderBy("seq", "desc")
      .limit(1)
      .executeTakeFirst();
    const fields = {
      seq: (last?.seq ?? 0) + 1,
      at: clock.now(),
      actor: entry.actor,
      action: entry.action,
      target: entry.target,
      source: entry.source,
      result: entry.result,
      details_json,
    };
    const prev_hash = last?.hash ?? GENESIS_HASH;
    const record: AuditRecord = { ...fields, prev_hash, hash: auditHash(prev_hash, fields) };
    await trx.insertInto("audit_log").values(record).execute();
    return record;
  });
}

export interface AuditVerification {
  ok: boolean;
  /** Records in the log. */
  records: number;
  /** The first record that fails, or the first missing seq. */
  firstBadSeq?: number;
  reason?: string;
  /** The last record: keep it elsewhere and pass it back as `anchor` later. */
  head?: { seq: number; hash: string };
}

/**
 * Walks the whole log in seq order (in pages, so memory stays flat) and
 * reports the first break. With `anchor`, also checks that the record the
 * anchor names still exists with that hash, which catches records cut off
 * the end.
 */
export async function verifyAudit(
  database: Database,
  opts: { anchor?: { seq: number; hash: string }; pageSize?: number } = {},
): Promise<AuditVerification> {
  const pageSize = opts.pageSize ?? 1000;
  let records = 0;
  let expected = 1;
  let prev = GENESIS_HASH;
  let bad: { seq: number; reason: string } | undefined;
  let head: { seq: number; hash: string } | undefined;
  let after = Number.MIN_SAFE_INTEGER;
  for (;;) {
    const page = await database.db
      .selectFrom("audit_log")
      .selectAll()
      .where("seq", ">", after)
      .orderBy("seq")
      .limit(pageSize)
      .execute();
    for (const r of page) {
      records++;
      if (bad === undefined) bad = checkRecord(r, expected, prev);
      if (opts.anchor?.seq === r.seq && opts.anchor.hash !== r.hash && bad === undefined) {
        bad = { seq: r.seq, reason: `record ${r.seq} differs from the anchor: the chain was rewritten` };
      }
      expected = r.seq + 1;
      prev = r.hash;
      head = { seq: r.seq, hash: r.hash };
    }
    if (page.length < pageSize) break;
    after = page[page.length - 1]!.seq;
  }
  if (bad === undefined && opts.anchor !== undefined && (head?.seq ?? 0) < opts.anchor.seq) {
    bad = {
      seq: (head?.seq ?? 0) + 1,
      reason: `the log ends at record ${head?.seq ?? 0} but the anchor names record ${opts.anchor.seq}: records were removed from the end`,
    };
  }
  const result: AuditVerification = { ok: bad === undefined, records };
  if (bad !== undefined) {
    result.firstBadSeq = bad.seq;
    result.reason = bad.reason;
  }
  if (head !== undefined) result.head = head;
  return result;
}

function checkRecord(
  r: AuditRecord,
  expected: number,
  prev: string,
): { seq: number; reason: string } | undefined {
  if (r.seq > expected) {
    const missing =
      r.seq - 1 === expected ? `record ${expected} is` : `records ${expected}..${r.seq - 1} are`;
    return { seq: expected, reason: `${missing} missing (the next record is ${r.seq})` };
  }
  if (r.seq < expected) return { seq: r.seq, reason: `record ${r.seq} is out of sequence` };
  if (r.prev_hash !== prev) {
    return {
      seq: r.seq,
      reason:
        `record ${r.seq} does not follow record ${r.seq - 1}: its prev_hash is not that record's hash ` +
        `(a record was changed and rehashed, moved or replaced)`,
    };
  }
  const { prev_hash, hash, ...fields } = r;
  if (auditHash(prev_hash, fields) !== hash) {
    return { seq: r.seq, reason: `record ${r.seq} does not match its hash: a field was changed` };
  }
  return undefined;
}

/**
 * SHA-256 (hex) over the version tag, prev_hash and the record's fields as a
 * JSON array in a fixed order. The array of strings and integers has one JSON
 * form, and details_json is already canonical text (sorted keys), so the hash
 * is the same on every dialect and Node version.
 */
export function auditHash(prevHash: string, f: Omit<AuditRecord, "prev_hash" | "hash">): string {
  const body = JSON.stringify([f.seq, f.at, f.actor, f.action, f.target, f.source, f.result, f.details_json]);
  return createHash("sha256").update(`${HASH_VERSION}\n${prevHash}\n${body}`).digest("hex");
}

/** JSON with object keys sorted at every level (arrays keep their order). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

/**
 * Names that hold secrets: token, secret, password/passwd, passphrase,
 * authorization, cookie, credential and anything with "key" (apiKey,
 * private_key, keyHash). Matched on the lower-cased name without separators.
 */
const SECRET_NAME = /token|secret|passw|passphrase|authorization|cookie|credential|key/;
/**
 * ... unless the name ends by saying it identifies rather than holds: tokenId,
 * api_key_id, keyPrefix, publicKeyFingerprint, tokenName, tokenCount,
 * apiKeyRole, tokenExpiresAt are kept.
 */
const IDENTIFYING_SUFFIX = /(id|ids|prefix|fingerprint|name|names|count|role|expiresat)$/;
const AUTH_SCHEME_VALUE = /^(bearer|basic|digest)\s/i;

export function isSecretName(name: string): boolean {
  const n = name.toLowerCase().replace(/[^a-z0-9]/g, "");
  return SECRET_NAME.test(n) && !IDENTIFYING_SUFFIX.test(n);
}

/**
 * A deep copy of a JSON-able value without secrets: object keys named like a
 * secret (isSecretName) are dropped, and a string that is an HTTP credential
 * ("Bearer ...", "Basic ...") becomes "[redacted]". The value goes through
 * JSON first (toJSON, undefined dropped), so the result is plain JSON data.
 * Use it on anything that reaches the audit log, events or logs.
 */
export function redact(value: unknown): unknown {
  const text = JSON.stringify(value) as string | undefined; // undefined for undefined or a function
  return text === undefined ? undefined : strip(JSON.parse(text) as unknown);
}

function strip(v: unknown): unknown {
  if (typeof v === "string") return AUTH_SCHEME_VALUE.test(v) ? "[redacted]" : v;
  if (Array.isArray(v)) return v.map(strip);
  if (v !== null && typeof v === "object") {
    // fromEntries defines own properties, so a key "__proto__" stays data.
    return Object.fromEntries(
      Object.entries(v).flatMap(([k, x]) => (isSecretName(k) ? [] : [[k, strip(x)]])),
    );
  }
  return v;
}
