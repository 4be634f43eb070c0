/**
 * `POST /api/v1/servers/:id/purge` on a real repository: a decommissioned
 * server's PITs, replica head and catalog rows go, a `server.purged` event
 * is appended, the repository verifies clean and `store gc` then frees the
 * data, while another server's PITs and head stay. Refused for an active
 * server, a server a job still uses, and non-admin keys; the CLI refuses to
 * purge without --yes when it cannot ask.
 */
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { buildApp } from "../../src/control/app.js";
import type { Database } from "../../src/control/db/index.js";
import { listEvents } from "../../src/control/events.js";
import {
  MemoryBackend,
  type Pit,
  type Repository,
  collectGarbage,
  importDisks,
  listPits,
  readHead,
  verifyRepository,
  writeHead,
} from "../../src/store/index.js";
import { lifeboat } from "../support/cli.js";
import { forEachDatabase } from "../support/databases.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";
import { T0, addApiKey, captureLogger, testCa, testConfig } from "./helpers.js";
import { addServer } from "./seed.js";

const HOUR = 3_600_000;
let dir = "";
const images: string[] = [];
before(async () => {
  dir = await tempDir("lifeboat-purge-");
  for (let i = 0; i < 4; i++) {
    images.push(path.join(dir, `disk-${i}.img`));
    await writeMixedImage(images[i]!, 512 << 10, 11 + i, 128 << 10);
  }
});
after(() => fs.rm(dir, { recursive: true, force: true }));

async function catalog(database: Database, serverId: string, pit: Pit): Promise<void> {
  await database.db
    .insertInto("pits")
    .values({
      id: pit.id,
      repository_id: "repo",
      server_id: serverId,
      server_name: pit.server,
      seq: pit.seq,
      time_ms: pit.timeMs,
      consistency: "crash",
      disks_json: "[]",
      labels_json: "{}",
    })
    .execute();
}

/** db-1: three PITs and a head of epoch 2; web-1: one PIT and a head; both in the catalog. */
async function seed(database: Database, repo: Repository, clock: ManualClock): Promise<void> {
  await addServer(database, "srv-db", "db-1");
  await addServer(database, "srv-web", "web-1");
  let last: Pit | undefined;
  for (const image of images.slice(0, 3)) {
    last = (await importDisks(repo, { server: "db-1", disks: [image] })).pit;
    await catalog(database, "srv-db", last);
    clock.advance(HOUR);
  }
  const web = (await importDisks(repo, { server: "web-1", disks: [images[3]!] })).pit;
  await catalog(database, "srv-web", web);
  const head = { appliedSeq: 1, timeMs: clock.now(), session: "s" };
  await writeHead(repo, { ...head, server: "db-1", disks: last!.disks, epoch: 2 });
  await writeHead(repo, { ...head, server: "web-1", disks: web.disks });
  clock.advance(HOUR);
}

forEachDatabase("server purge", (open) => {
  void it("purges a decommissioned server's PITs, head and catalog rows; gc then frees them", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const repo = await newRepository({ backend: new MemoryBackend(clock), clock });
    const { logger } = captureLogger();
    const app = await buildApp({
      database,
      config: testConfig(),
      ca: await testCa(),
      clock,
      logger,
      repo: () => Promise.resolve(repo),
    });
    try {
      const key = async (role: "admin" | "operator" | "viewer") => ({
        authorization: `Bearer ${await addApiKey(database, role, clock)}`,
      });
      const admin = await key("admin");
      await seed(database, repo, clock);
      const purge = (headers: Record<string, string>, server = "db-1") =>
        app.inject({ method: "POST", url: `/api/v1/servers/${server}/purge`, headers, payload: {} });

      const active = await purge(admin);
      assert.equal(active.statusCode, 409);
      assert.equal(active.json<{ code: string }>().code, "SERVER_NOT_DECOMMISSIONED");
      assert.equal((await listPits(repo, { server: "db-1" })).length, 3, "nothing purged");

      const dec = await app.inject({
        method: "POST",
        url: "/api/v1/servers/db-1/decommission",
        headers: admin,
        payload: {},
      });
      assert.equal(dec.statusCode, 200, dec.body);

      for (const role of ["operator", "viewer"] as const) {
        const r = await purge(await key(role));
        assert.equal(r.statusCode, 403, `${role}: ${r.body}`);
      }
      assert.equal((await purge(admin, "nope")).statusCode, 404);

      await database.db
        .insertInto("jobs")
        .values({
          id: "job-busy",
          type: "drill",
          state: "running",
          server_ids_json: JSON.stringify(["srv-db"]),
          params_json: "{}",
          result_json: null,
          created_at: clock.now(),
          created_by: "test",
          claimed_by: null,
          claimed_at: null,
          finished_at: null,
          updated_at: null,
        })
        .execute();
      const busy = await purge(admin);
      assert.equal(busy.statusCode, 409);
      assert.equal(busy.json<{ code: string }>().code, "SERVER_BUSY");
      await database.db
        .updateTable("jobs")
        .set({ state: "succeeded" })
        .where("id", "=", "job-busy")
        .execute();
      assert.equal((await listPits(repo, { server: "db-1" })).length, 3, "nothing purged while busy");

      const done = await purge(admin);
      assert.equal(done.statusCode, 200, done.body);
      assert.deepEqual(done.json(), { id: "srv-db", name: "db-1", pitsForgotten: 3, catalogRows: 3 });

      assert.deepEqual(await listPits(repo, { server: "db-1" }), []);
      assert.equal(await readHead(repo, "db-1"), undefined);
      assert.equal((await listPits(repo, { server: "web-1" })).length, 1, "another server's PITs stay");
      assert.ok(await readHead(repo, "web-1"), "another server's head stays");
      const rows = await database.db.selectFrom("pits").select(["server_id"]).execute();
      assert.deepEqual(
        rows.map((r) => r.server_id),
        ["srv-web"],
      );
      const events = await listEvents(database, { types: ["server.purged"] });
      assert.equal(events.length, 1);
      assert.equal(events[0]!.serverId, "srv-db");
      assert.deepEqual(events[0]!.payload, { name: "db-1", pitsForgotten: 3 });
      const audit = await database.db
        .selectFrom("audit_log")
        .select(["action", "result", "target"])
        .where("action", "=", "server.purge")
        .execute();
      assert.ok(
        audit.some((a) => a.result === "ok" && a.target === "server:srv-db"),
        JSON.stringify(audit),
      );
      assert.ok(
        audit.some((a) => a.result !== "ok"),
        `refusals are audited: ${JSON.stringify(audit)}`,
      );

      const verified = await verifyRepository(repo);
      assert.equal(verified.ok, true, JSON.stringify(verified.damage));
      assert.ok(verified.unreferencedObjects > 0, "the purged data is unreferenced until gc");

      const first = await collectGarbage(repo, { safetyMarginMs: 0 });
      assert.ok(first.trashed > 0, JSON.stringify(first));
      clock.advance(HOUR);
      const second = await collectGarbage(repo, { safetyMarginMs: 0 });
      assert.equal(second.deleted, first.trashed);
      assert.ok(second.deletedBytes > 0);
      const clean = await verifyRepository(repo, { readData: true });
      assert.equal(clean.ok, true, JSON.stringify(clean.damage));
      assert.equal(clean.unreferencedObjects, 0);
      assert.equal(clean.pits, 1);

      const again = await purge(admin);
      assert.equal(again.statusCode, 200, "purging twice is harmless");
      assert.equal(again.json<{ pitsForgotten: number }>().pitsForgotten, 0);
    } finally {
      await app.close();
      await repo.close();
    }
  });
});

void it("`servers purge` without --yes and without a terminal is a usage error", async () => {
  const r = await lifeboat(["servers", "purge", "db-1", "--json", "--endpoint", "https://127.0.0.1:9"]);
  assert.equal(r.code, 2, r.stderr);
  assert.equal((JSON.parse(r.stderr) as { code: string }).code, "CONFIRMATION_REQUIRED");
});
