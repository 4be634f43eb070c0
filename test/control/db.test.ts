import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Migrator, NO_MIGRATIONS, sql } from "kysely";
import { ManualClock, isLifeboatError } from "../../src/base/index.js";
import {
  type Database,
  MIGRATIONS,
  type Schema,
  appendEvent,
  migrateToLatest,
  migrationStatus,
  openDatabase,
  parseDatabaseUrl,
  redactUrl,
} from "../../src/control/db/index.js";
import { forEachDatabase, postgresUrlFor } from "../support/databases.js";

const TABLES: (keyof Schema)[] = [
  "api_keys",
  "install_tokens",
  "servers",
  "certificates",
  "registrations",
  "replicators",
  "settings",
  "pits",
  "plans",
  "jobs",
  "job_log",
  "events",
  "audit_log",
  "leases",
  "agent_commands",
  "group_pits",
  "webhooks",
  "rpo_status",
  "pool_assignments",
  "failbacks",
  "disk_generations",
  "console_sessions",
  "lag_samples",
  "repository_checks",
  "replica_epochs",
  "replicator_ingest",
];

const ALL_MIGRATIONS = [
  "0001_initial",
  "0002_replicators_jobs",
  "0003_commands",
  "0004_launch",
  "0005_webhooks",
  "0006_console",
  "0007_replicator_pool",
  "0008_failback",
  "0009_replica_epochs",
  "0010_repository_checks",
  "0011_replicator_ingest",
];

/** A time past 2^32 ms (and past 2^31 s): catches int4 columns and int8-as-string. */
const T = 1_764_000_000_123;

async function tableNames(database: Database): Promise<string[]> {
  const tables = await database.db.introspection.getTables();
  return tables.map((t) => t.name).sort();
}

function migrator(database: Database): Migrator {
  return new Migrator({
    db: database.db,
    provider: { getMigrations: () => Promise.resolve({ ...MIGRATIONS }) },
  });
}

forEachDatabase("control database", (open, dialect) => {
  void describe("migrations", () => {
    void it("apply to an empty database, then do nothing", async () => {
      const database = await open({ migrate: false });
      assert.deepEqual(await tableNames(database), []);
      assert.deepEqual((await migrationStatus(database)).pending, Object.keys(MIGRATIONS).sort());
      assert.deepEqual(await migrateToLatest(database), ALL_MIGRATIONS);
      assert.deepEqual(await tableNames(database), [...TABLES].sort());
      assert.deepEqual(await migrateToLatest(database), []);
      assert.deepEqual(await migrationStatus(database), {
        applied: ALL_MIGRATIONS,
        pending: [],
        unknown: [],
      });
    });

    void it("run down to nothing and up again", async () => {
      const database = await open();
      const down = await migrator(database).migrateTo(NO_MIGRATIONS);
      assert.equal(down.error, undefined);
      assert.deepEqual(await tableNames(database), []);
      assert.deepEqual(await migrateToLatest(database), ALL_MIGRATIONS);
      assert.deepEqual(await tableNames(database), [...TABLES].sort());
    });

    void it("refuse a database a newer version migrated, and leave it alone", async () => {
      const database = await open();
      const db = database.db.withTables<{ kysely_migration: { name: string; timestamp: string } }>();
      await db
        .insertInto("kysely_migration")
        .values({ name: "9999_from_the_future", timestamp: new Date(T).toISOString() })
        .execute();
      await assert.rejects(migrateToLatest(database), (err) => {
        assert.ok(isLifeboatError(err, "DB_SCHEMA_TOO_NEW"), String(err));
        assert.match(err.message, /9999_from_the_future/);
        assert.match(err.hint, /newer/);
        return true;
      });
      assert.deepEqual((await migrationStatus(database)).unknown, ["9999_from_the_future"]);
      assert.deepEqual(await tableNames(database), [...TABLES].sort());
    });

    if (dialect === "postgres") {
      void it("can run from several pools at once", async () => {
        const a = await open({ migrate: false });
        const b = await open({ sameAs: a });
        const c = await open({ sameAs: a });
        const applied = await Promise.all([a, b, c].map((d) => migrateToLatest(d)));
        assert.deepEqual(applied.flat(), ALL_MIGRATIONS);
        assert.deepEqual(await tableNames(c), [...TABLES].sort());
      });
    }
  });

  if (dialect === "sqlite") {
    void it("sets WAL, synchronous NORMAL, foreign keys and a busy timeout", async () => {
      const { db } = await open();
      const pragma = async (name: string) =>
        Object.values((await sql.raw(`pragma ${name}`).execute(db)).rows[0] as object)[0] as unknown;
      assert.equal(await pragma("journal_mode"), "wal");
      assert.equal(await pragma("synchronous"), 1); // NORMAL
      assert.equal(await pragma("foreign_keys"), 1);
      assert.equal(await pragma("busy_timeout"), 5000);
    });
  }

  void describe("tables", () => {
    void it("return every column as written: text, integer ms, JSON as text, nulls", async () => {
      const { db } = await open();
      const rows = {
        api_keys: {
          id: "key_1",
          name: "ops laptop",
          role: "operator" as const,
          key_hash: "h".repeat(64),
          created_at: T,
          created_by: "apikey:key_0",
          revoked_at: null,
          last_used_at: T + 1,
        },
        install_tokens: {
          id: "tok_abc",
          secret_hash: "s".repeat(64),
          role: "agent" as const,
          uses_allowed: 3,
          uses_count: 1,
          expires_at: T + 3_600_000,
          server_name: "sap-db-01",
          recovery_job_id: null,
          created_by: "apikey:key_1",
          created_at: T,
          revoked_at: null,
        },
        replicators: {
          id: "rep_1",
          name: "replicator-a",
          address: "10.0.0.5:443",
          capacity_json: JSON.stringify({ servers: 50, bytesPerSecond: 5e8 }),
          state: "ready",
          last_seen_at: T,
          registered_at: T - 1000,
          drained: 1 as const,
          decommissioned_at: null,
          token_id: "tok_1",
        },
        servers: {
          id: "srv_1",
          name: "sap-db-01",
          hostname: "sapdb01.corp",
          state: "CONTINUOUS",
          lag_seconds: 1.25,
          backlog_bytes: 5_000_000_000_000, // 5 TB: past 2^32
          last_seen_at: T,
          inventory_json: JSON.stringify({
            disks: [{ path: "/dev/sda", sizeBytes: 2 ** 40 }],
            os: "SLES 15",
          }),
          replicator_id: "rep_1",
          token_id: "tok_abc",
          registered_at: T,
          decommissioned_at: null,
          group_name: "erp",
          fenced: "failed-over",
          recovery_job_id: null,
        },
        certificates: {
          serial: "0a1b2c",
          role: "agent" as const,
          subject_id: "srv_1",
          public_key_fingerprint: "f".repeat(64),
          not_before: T,
          not_after: T + 365 * 86_400_000,
          revoked_at: null,
          token_id: "tok_abc",
        },
        registrations: {
          token_id: "tok_abc",
          public_key_fingerprint: "f".repeat(64),
          subject_id: "srv_1",
          certificate_serial: "0a1b2c",
          created_at: T,
        },
        settings: {
          scope: "default",
          kind: "replication" as const,
          json: JSON.stringify({ bandwidthMbps: 100, pitPolicy: "default" }),
          updated_at: T,
          updated_by: "apikey:key_1",
        },
        pits: {
          id: "0123456789abcdef01234567",
          repository_id: "repo_1",
          server_id: null,
          server_name: "sap-db-01",
          seq: 7,
          time_ms: T,
          consistency: "filesystem" as const,
          disks_json: JSON.stringify([{ index: 0, sizeBytes: 2 ** 40 }]),
          labels_json: JSON.stringify({ by: "schedule" }),
        },
        jobs: {
          id: "job_1",
          type: "drill",
          state: "running",
          server_ids_json: JSON.stringify(["srv_1"]),
          params_json: JSON.stringify({ pit: "latest" }),
          result_json: null,
          created_at: T,
          created_by: "apikey:key_1",
          claimed_by: "cp-1",
          claimed_at: T + 5,
          finished_at: null,
          updated_at: T + 6,
          parent_job_id: null,
          terminate_requested_at: null,
        },
        job_log: {
          job_id: "job_1",
          seq: 1,
          at: T + 6,
          level: "info" as const,
          message: "materializing disk 0",
        },
        events: {
          seq: 1,
          at: T,
          type: "server.state",
          server_id: "srv_1",
          payload_json: '{"state":"CONTINUOUS"}',
        },
        audit_log: {
          seq: 1,
          at: T,
          actor: "apikey:key_1",
          action: "token.create",
          target: "token:tok_abc",
          source: "10.0.0.9",
          result: "ok",
          details_json: "{}",
          prev_hash: "0".repeat(64),
          hash: "a".repeat(64),
        },
        leases: { name: "retention", holder: "cp-1", expires_at: T + 30_000 },
      };
      // Parents before children (foreign keys are enforced).
      await db.insertInto("api_keys").values(rows.api_keys).execute();
      await db.insertInto("install_tokens").values(rows.install_tokens).execute();
      await db.insertInto("replicators").values(rows.replicators).execute();
      await db.insertInto("servers").values(rows.servers).execute();
      await db.insertInto("certificates").values(rows.certificates).execute();
      await db.insertInto("registrations").values(rows.registrations).execute();
      await db.insertInto("settings").values(rows.settings).execute();
      await db.insertInto("pits").values(rows.pits).execute();
      await db.insertInto("jobs").values(rows.jobs).execute();
      await db.insertInto("job_log").values(rows.job_log).execute();
      await db.insertInto("events").values(rows.events).execute();
      await db.insertInto("audit_log").values(rows.audit_log).execute();
      await db.insertInto("leases").values(rows.leases).execute();

      for (const [table, row] of Object.entries(rows)) {
        const back = await db
          .selectFrom(table as keyof Schema)
          .selectAll()
          .execute();
        assert.deepEqual(back, [row], table);
      }
      const server = await db.selectFrom("servers").selectAll().executeTakeFirstOrThrow();
      assert.equal(typeof server.backlog_bytes, "number");
      assert.deepEqual(JSON.parse(server.inventory_json!), JSON.parse(rows.servers.inventory_json));
      const count = await db
        .selectFrom("servers")
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .executeTakeFirst();
      assert.equal(count?.n, 1, "count(*) is a number on both dialects");
    });

    void it("fill defaults: uses_count 0, drained 0, capacity {}, labels {}", async () => {
      const { db } = await open();
      await db
        .insertInto("install_tokens")
        .values({
          id: "tok_d",
          secret_hash: "x",
          role: "replicator",
          uses_allowed: 1,
          expires_at: T,
          server_name: null,
          created_by: "system",
          created_at: T,
          revoked_at: null,
        })
        .execute();
      await db
        .insertInto("replicators")
        .values({ id: "r", name: "r", address: "a:1", state: "ready", last_seen_at: null, registered_at: T })
        .execute();
      await db
        .insertInto("pits")
        .values({
          id: "p",
          repository_id: "repo",
          server_id: "srv",
          server_name: "s",
          seq: 1,
          time_ms: T,
          consistency: "none",
          disks_json: "[]",
        })
        .execute();
      const token = await db.selectFrom("install_tokens").selectAll().executeTakeFirstOrThrow();
      assert.equal(token.uses_count, 0);
      const rep = await db.selectFrom("replicators").selectAll().executeTakeFirstOrThrow();
      assert.equal(rep.drained, 0);
      assert.equal(rep.capacity_json, "{}");
      const pit = await db.selectFrom("pits").select("labels_json").executeTakeFirstOrThrow();
      assert.equal(pit.labels_json, "{}");
    });

    void it("keep server names, token ids, key hashes and registrations unique", async () => {
      const { db } = await open();
      const server = (id: string, name: string) => ({
        id,
        name,
        hostname: null,
        state: "INITIAL_SYNC",
        lag_seconds: null,
        backlog_bytes: null,
        last_seen_at: null,
        inventory_json: null,
        replicator_id: null,
        token_id: null,
        registered_at: T,
        decommissioned_at: null,
      });
      await db.insertInto("servers").values(server("srv_1", "web-01")).execute();
      await assert.rejects(db.insertInto("servers").values(server("srv_2", "web-01")).execute());
      await assert.rejects(db.insertInto("servers").values(server("srv_1", "web-02")).execute());

      const token = {
        id: "tok_1",
        secret_hash: "a",
        role: "agent" as const,
        uses_allowed: 1,
        expires_at: T,
        server_name: null,
        created_by: "system",
        created_at: T,
        revoked_at: null,
      };
      await db.insertInto("install_tokens").values(token).execute();
      await assert.rejects(
        db
          .insertInto("install_tokens")
          .values({ ...token, secret_hash: "b" })
          .execute(),
      );

      const key = (id: string) => ({
        id,
        name: id,
        role: "viewer" as const,
        key_hash: "same",
        created_at: T,
        created_by: null,
        revoked_at: null,
        last_used_at: null,
      });
      await db.insertInto("api_keys").values(key("k1")).execute();
      await assert.rejects(db.insertInto("api_keys").values(key("k2")).execute());

      await db
        .insertInto("certificates")
        .values({
          serial: "01",
          role: "agent",
          subject_id: "srv_1",
          public_key_fingerprint: "fp",
          not_before: T,
          not_after: T + 1,
          revoked_at: null,
          token_id: "tok_1",
        })
        .execute();
      const reg = {
        token_id: "tok_1",
        public_key_fingerprint: "fp",
        subject_id: "srv_1",
        certificate_serial: "01",
        created_at: T,
      };
      await db.insertInto("registrations").values(reg).execute();
      await assert.rejects(
        db
          .insertInto("registrations")
          .values({ ...reg, subject_id: "srv_9" })
          .execute(),
      );
      // The idempotent-registration pattern: insert, or find the row that is there.
      const again = await db
        .insertInto("registrations")
        .values({ ...reg, subject_id: "srv_9" })
        .onConflict((oc) => oc.columns(["token_id", "public_key_fingerprint"]).doNothing())
        .executeTakeFirst();
      assert.equal(again.numInsertedOrUpdatedRows, 0n);
    });

    void it("enforce foreign keys", async () => {
      const { db } = await open();
      await assert.rejects(
        db
          .insertInto("job_log")
          .values({ job_id: "nope", seq: 1, at: T, level: "info", message: "x" })
          .execute(),
      );
    });
  });

  void describe("events", () => {
    void it("get consecutive seqs under concurrent appends", async () => {
      const database = await open();
      const clock = new ManualClock(T);
      const rows = await Promise.all(
        Array.from({ length: 20 }, (_, i) => appendEvent(database, { type: "t", payload: { i } }, clock)),
      );
      assert.deepEqual(
        rows.map((r) => r.seq).sort((a, b) => a - b),
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      const stored = await database.db.selectFrom("events").select("seq").orderBy("seq").execute();
      assert.equal(stored.length, 20);
    });
  });

  if (dialect === "postgres") {
    void describe("connection errors", () => {
      void it("a missing database is DB_NOT_FOUND", async () => {
        const url = await postgresUrlFor("lifeboat_no_such_database");
        await assert.rejects(openDatabase(url), (err) => isLifeboatError(err, "DB_NOT_FOUND"));
      });

      void it("a wrong password is DB_AUTH_FAILED and is not shown", async (t) => {
        const url = new URL(await postgresUrlFor("postgres"));
        if (url.password === "") {
          t.skip("the test server trusts every login (private cluster): no password to get wrong");
          return;
        }
        url.password = "Wrong-Pa55word-xyz";
        await assert.rejects(openDatabase(url.toString()), (err) => {
          assert.ok(isLifeboatError(err, "DB_AUTH_FAILED"), String(err));
          const shown = JSON.stringify({ ...err.toJSON(), cause: String(err.cause) });
          assert.ok(!shown.includes("Wrong-Pa55word-xyz"), shown);
          return true;
        });
      });
    });
  }
});

void describe("database URLs and open errors", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-db-url-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void it("parses sqlite and postgres URLs", () => {
    assert.deepEqual(parseDatabaseUrl("sqlite:/var/lib/lifeboat/control.db"), {
      dialect: "sqlite",
      file: "/var/lib/lifeboat/control.db",
      display: "sqlite:/var/lib/lifeboat/control.db",
    });
    assert.equal(parseDatabaseUrl("sqlite:///abs/x.db").dialect, "sqlite");
    assert.deepEqual(parseDatabaseUrl("/abs/y.db"), {
      dialect: "sqlite",
      file: "/abs/y.db",
      display: "sqlite:/abs/y.db",
    });
    assert.equal(parseDatabaseUrl("rel.db").dialect, "sqlite");
    const pgUrl = parseDatabaseUrl("postgres://lb:Sekr3t%40x@db.corp:5432/lifeboat?sslmode=require");
    assert.equal(pgUrl.dialect, "postgres");
    assert.equal(pgUrl.display, "postgres://lb:***@db.corp:5432/lifeboat?sslmode=require");
    assert.equal(parseDatabaseUrl("postgresql://lb@/lifeboat?host=/run/postgresql").dialect, "postgres");
  });

  void it("redacts passwords in the userinfo and in the query", () => {
    assert.equal(redactUrl("postgres://u:p@h/d"), "postgres://u:***@h/d");
    assert.equal(redactUrl("postgres://u@h/d?password=p&x=1"), "postgres://u@h/d?password=***&x=1");
    assert.equal(redactUrl("postgres://h/d"), "postgres://h/d");
  });

  for (const bad of [
    "mysql://u:pw1234@h/d",
    "sqlite:relative.db",
    "postgres://u:pw1234@h:99999/d",
    "postgres://u:pw1234@h/",
    "",
  ]) {
    void it(`refuses ${JSON.stringify(bad)} with DB_BAD_URL, without the password`, async () => {
      await assert.rejects(openDatabase(bad), (err) => {
        assert.ok(isLifeboatError(err, "DB_BAD_URL"), String(err));
        assert.ok(!err.message.includes("pw1234"), err.message);
        return true;
      });
    });
  }

  void it("a SQLite file in a missing directory is DB_UNREACHABLE with a hint", async () => {
    await assert.rejects(openDatabase(`sqlite:${dir}/missing/control.db`), (err) => {
      assert.ok(isLifeboatError(err, "DB_UNREACHABLE"), String(err));
      assert.match(err.hint, /directory/);
      return true;
    });
  });

  void it("a file that is not SQLite is DB_NOT_A_DATABASE", async () => {
    const file = path.join(dir, "garbage.db");
    await writeFile(file, Buffer.alloc(8192, 0x5a));
    await assert.rejects(openDatabase(file), (err) => isLifeboatError(err, "DB_NOT_A_DATABASE"));
  });

  void it("a PostgreSQL server that is not there is DB_UNREACHABLE, retryable, without the password", async () => {
    const port = await closedPort();
    await assert.rejects(openDatabase(`postgres://lb:Top5ecret@127.0.0.1:${port}/lifeboat`), (err) => {
      assert.ok(isLifeboatError(err, "DB_UNREACHABLE"), String(err));
      assert.equal(err.retryable, true);
      assert.match(err.message, /127\.0\.0\.1/);
      assert.match(err.hint, /running/);
      const shown = `${err.message} ${err.hint} ${String(err.cause)} ${JSON.stringify(err)}`;
      assert.ok(!shown.includes("Top5ecret"), shown);
      return true;
    });
  });

  void it("close is idempotent", async () => {
    const database = await openDatabase(path.join(dir, "close.db"));
    await Promise.all([database.close(), database.close()]);
    await database.close();
  });
});

/** A port nothing listens on: bind one, note it, close it. */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
