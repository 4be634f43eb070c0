import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { ManualClock } from "../../src/base/index.js";
import {
  type AuditEntry,
  GENESIS_HASH,
  appendAudit,
  auditHash,
  canonicalJson,
  isSecretName,
  redact,
  verifyAudit,
} from "../../src/control/audit.js";
import type { Database } from "../../src/control/db/index.js";
import { forEachDatabase } from "../support/databases.js";

const T0 = 1_764_000_000_000;

function entry(i: number): AuditEntry {
  return {
    actor: `apikey:key_${i % 3}`,
    action: "server.update",
    target: `server:srv_${i}`,
    source: "10.0.0.9",
    result: i % 7 === 0 ? "denied" : "ok",
    details: { i, changed: ["bandwidth"], note: `change ${i}` },
  };
}

async function fill(database: Database, n: number): Promise<void> {
  const clock = new ManualClock(T0);
  for (let i = 1; i <= n; i++) {
    await appendAudit(database, entry(i), clock);
    clock.advance(1000);
  }
}

async function seqs(database: Database): Promise<number[]> {
  const rows = await database.db.selectFrom("audit_log").select("seq").orderBy("seq").execute();
  return rows.map((r) => r.seq);
}

const ONE_TO_100 = Array.from({ length: 100 }, (_, i) => i + 1);

forEachDatabase("audit log", (open, dialect) => {
  void it("an empty log verifies", async () => {
    const database = await open();
    assert.deepEqual(await verifyAudit(database), { ok: true, records: 0 });
  });

  void it("chains records: seq from 1, prev_hash = previous hash, hash over the fields", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const first = await appendAudit(database, entry(1), clock);
    const second = await appendAudit(database, entry(2), clock);
    assert.equal(first.seq, 1);
    assert.equal(first.prev_hash, GENESIS_HASH);
    assert.equal(second.seq, 2);
    assert.equal(second.prev_hash, first.hash);
    assert.match(first.hash, /^[0-9a-f]{64}$/);
    assert.equal(first.at, T0);
    assert.deepEqual(JSON.parse(first.details_json), entry(1).details);
    const stored = await database.db.selectFrom("audit_log").selectAll().orderBy("seq").execute();
    assert.deepEqual(stored, [first, second]);
  });

  void it("100 concurrent appends give one chain with 100 consecutive seqs", async () => {
    const a = await open();
    // On PostgreSQL half go through a second pool, as from a second control-plane process.
    const b = dialect === "postgres" ? await open({ sameAs: a }) : a;
    const clock = new ManualClock(T0);
    await Promise.all(ONE_TO_100.map((i) => appendAudit(i % 2 === 0 ? a : b, entry(i), clock)));
    assert.deepEqual(await seqs(a), ONE_TO_100);
    const report = await verifyAudit(a);
    assert.equal(report.ok, true, report.reason);
    assert.equal(report.records, 100);
    assert.equal(report.head?.seq, 100);
  });

  if (dialect === "sqlite") {
    void it("appends from three threads with their own connections do not fork the chain", async () => {
      const database = await open();
      const clock = new ManualClock(T0);
      const workers = [0, 1].map((w) => appendFromWorker(database.location, w, 30));
      const local = Array.from({ length: 40 }, (_, i) => appendAudit(database, entry(i), clock));
      await Promise.all([...workers, ...local]);
      assert.deepEqual(await seqs(database), ONE_TO_100);
      const report = await verifyAudit(database, { pageSize: 7 });
      assert.equal(report.ok, true, report.reason);
      assert.equal(report.records, 100);
    });
  }

  void it("a changed field is found at its record", async () => {
    const database = await open();
    await fill(database, 100);
    await database.db
      .updateTable("audit_log")
      .set({ actor: "apikey:someone-else" })
      .where("seq", "=", 42)
      .execute();
    const report = await verifyAudit(database);
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 42);
    assert.match(report.reason!, /does not match its hash/);
    assert.equal(report.records, 100);
  });

  void it("a changed detail or time is found too", async () => {
    const database = await open();
    await fill(database, 20);
    await database.db
      .updateTable("audit_log")
      .set({ at: T0 + 1 })
      .where("seq", "=", 5)
      .execute();
    await database.db
      .updateTable("audit_log")
      .set({ details_json: '{"i":9}' })
      .where("seq", "=", 9)
      .execute();
    const report = await verifyAudit(database);
    assert.equal(report.firstBadSeq, 5);
  });

  void it("a deleted record is found as a gap", async () => {
    const database = await open();
    await fill(database, 100);
    await database.db.deleteFrom("audit_log").where("seq", "=", 30).execute();
    const report = await verifyAudit(database);
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 30);
    assert.match(report.reason!, /record 30 is missing/);
    assert.equal(report.records, 99);
  });

  void it("a deleted first record is found", async () => {
    const database = await open();
    await fill(database, 5);
    await database.db.deleteFrom("audit_log").where("seq", "=", 1).execute();
    assert.equal((await verifyAudit(database)).firstBadSeq, 1);
  });

  void it("two swapped records are found at the first of them", async () => {
    const database = await open();
    await fill(database, 100);
    await database.db.updateTable("audit_log").set({ seq: -10 }).where("seq", "=", 10).execute();
    await database.db.updateTable("audit_log").set({ seq: 10 }).where("seq", "=", 11).execute();
    await database.db.updateTable("audit_log").set({ seq: 11 }).where("seq", "=", -10).execute();
    const report = await verifyAudit(database);
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 10);
  });

  void it("a changed and rehashed record is found at the record after it", async () => {
    const database = await open();
    await fill(database, 100);
    const r = await database.db
      .selectFrom("audit_log")
      .selectAll()
      .where("seq", "=", 50)
      .executeTakeFirstOrThrow();
    const forged = { ...r, result: "ok", actor: "apikey:innocent" };
    const { prev_hash, hash: _old, ...fields } = forged;
    await database.db
      .updateTable("audit_log")
      .set({ actor: forged.actor, result: forged.result, hash: auditHash(prev_hash, fields) })
      .where("seq", "=", 50)
      .execute();
    const report = await verifyAudit(database);
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 51);
    assert.match(report.reason!, /record 51 does not follow record 50/);
  });

  void it("records cut off the end are found only against an anchor", async () => {
    const database = await open();
    await fill(database, 10);
    const anchor = (await verifyAudit(database)).head!;
    assert.deepEqual(Object.keys(anchor).sort(), ["hash", "seq"]);
    await database.db.deleteFrom("audit_log").where("seq", ">=", 9).execute();
    assert.equal((await verifyAudit(database)).ok, true, "the chain alone cannot see a shorter tail");
    const report = await verifyAudit(database, { anchor });
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 9);
    assert.match(report.reason!, /removed from the end/);
  });

  void it("an anchor finds a rewritten chain", async () => {
    const database = await open();
    await fill(database, 10);
    const anchor = (await verifyAudit(database)).head!;
    // Someone with write access replaces the whole log by a recomputed one.
    await database.db.deleteFrom("audit_log").execute();
    const clock = new ManualClock(T0 + 5);
    for (let i = 1; i <= 10; i++) await appendAudit(database, entry(i + 1), clock);
    assert.equal((await verifyAudit(database)).ok, true);
    const report = await verifyAudit(database, { anchor });
    assert.equal(report.ok, false);
    assert.equal(report.firstBadSeq, 10);
  });

  void it("drops secrets from details before storing them", async () => {
    const database = await open();
    const record = await appendAudit(
      database,
      {
        ...entry(1),
        details: {
          tokenId: "tok_abc",
          token: "tok_abc.s3cr3t",
          request: { headers: { Authorization: "Bearer abc", "x-request-id": "r1" }, password: "pw" },
        },
      },
      new ManualClock(T0),
    );
    assert.equal(record.details_json, '{"request":{"headers":{"x-request-id":"r1"}},"tokenId":"tok_abc"}');
  });
});

void describe("audit encoding", () => {
  void it("hashes a known record to a known value (the encoding is part of the format)", () => {
    const fields = {
      seq: 1,
      at: T0,
      actor: "apikey:key_1",
      action: "token.create",
      target: "token:tok_abc",
      source: "10.0.0.9",
      result: "ok",
      details_json: canonicalJson({ uses: 1, role: "agent" }),
    };
    assert.equal(fields.details_json, '{"role":"agent","uses":1}');
    assert.equal(auditHash(GENESIS_HASH, fields), GOLDEN_HASH);
  });

  void it("canonical JSON sorts keys at every level and keeps array order", () => {
    assert.equal(
      canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: null } }),
      '{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1}',
    );
  });
});

void describe("redact", () => {
  void it("drops keys named like secrets, at any depth and in arrays", () => {
    assert.deepEqual(
      redact({
        name: "web-01",
        token: "t",
        installToken: "t",
        secret: "s",
        client_secret: "s",
        password: "p",
        db_passwd: "p",
        apiKey: "k",
        api_key: "k",
        private_key: "k",
        keyHash: "h",
        Authorization: "Bearer x",
        cookie: "c",
        credentials: { a: 1 },
        passphrase: "p",
        nested: [{ password: "p", ok: 1 }, "plain"],
      }),
      { name: "web-01", nested: [{ ok: 1 }, "plain"] },
    );
  });

  void it("keeps names that identify rather than hold a secret", () => {
    const kept = {
      tokenId: "tok_1",
      api_key_id: "key_1",
      keyPrefix: "lbk_12",
      publicKeyFingerprint: "ab",
      tokenName: "n",
      tokenCount: 2,
      apiKeyRole: "viewer",
      tokenExpiresAt: 1,
      tokenIds: ["a"],
    };
    assert.deepEqual(redact(kept), kept);
  });

  void it("replaces HTTP credentials found as values, and copies instead of mutating", () => {
    const input = {
      header: "Bearer abc.def",
      basic: "Basic dXNlcjpwYXNz",
      other: "Bearerish",
      when: new Date(0),
    };
    assert.deepEqual(redact(input), {
      header: "[redacted]",
      basic: "[redacted]",
      other: "Bearerish",
      when: "1970-01-01T00:00:00.000Z",
    });
    assert.equal(input.header, "Bearer abc.def");
  });

  void it("handles non-objects and keeps a __proto__ key as data", () => {
    assert.equal(redact(undefined), undefined);
    assert.equal(redact(5), 5);
    assert.deepEqual(redact([1, "x"]), [1, "x"]);
    const out = redact(JSON.parse('{"__proto__":{"password":"p","x":1}}')) as Record<string, unknown>;
    assert.deepEqual(Object.getPrototypeOf(out), Object.prototype);
    assert.equal(JSON.stringify(out), '{"__proto__":{"x":1}}');
    assert.equal(isSecretName("SECRET"), true);
    assert.equal(isSecretName("hostname"), false);
  });
});

/**
 * Computed independently of auditHash():
 *   printf 'lifeboat-audit/1\n%s\n%s' "$(printf '0%.0s' {1..64})" \
 *     '[1,1764000000000,"apikey:key_1","token.create","token:tok_abc","10.0.0.9","ok","{\"role\":\"agent\",\"uses\":1}"]' | sha256sum
 */
const GOLDEN_HASH = "ae274a6db6bb25204818052a2298a8f910780b1b1160fe31532af6a98405414c";

/**
 * Appends `count` records from a worker thread with its own connection to the
 * same SQLite file: real contention for the write lock, which a single
 * connection (kysely's mutex) never sees.
 */
function appendFromWorker(location: string, worker: number, count: number): Promise<void> {
  const source = `
    const { workerData, parentPort } = require("node:worker_threads");
    (async () => {
      const { openDatabase } = await import(workerData.db);
      const { appendAudit } = await import(workerData.audit);
      const { ManualClock } = await import(workerData.base);
      const database = await openDatabase(workerData.location);
      try {
        const clock = new ManualClock(${T0});
        for (let i = 0; i < workerData.count; i++) {
          await appendAudit(database, { actor: "worker:" + workerData.worker, action: "test.append",
            target: String(i), source: "thread", result: "ok" }, clock);
        }
      } finally {
        await database.close();
      }
      parentPort.postMessage("done");
    })();`;
  const here = import.meta.url;
  const w = new Worker(source, {
    eval: true,
    workerData: {
      location,
      worker,
      count,
      db: new URL("../../src/control/db/index.js", here).href,
      audit: new URL("../../src/control/audit.js", here).href,
      base: new URL("../../src/base/index.js", here).href,
    },
  });
  return new Promise((resolve, reject) => {
    let done = false;
    w.once("message", () => (done = true));
    w.once("error", reject);
    w.once("exit", (code) =>
      done ? resolve() : reject(new Error(`worker ${worker} exited ${code} before finishing`)),
    );
  });
}
