import assert from "node:assert/strict";
import { it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { RequestMetrics, scrapeMetrics } from "../../src/control/metrics.js";
import {
  decommission,
  recordReplicatorHeartbeat,
  recordReplicatorPits,
} from "../../src/control/replicators.js";
import { type Database } from "../../src/control/db/index.js";
import { type Repository, listPits, writePit } from "../../src/store/index.js";
import { newRepository } from "../support/repo.js";
import { forEachDatabase } from "../support/databases.js";
import { T0 } from "./helpers.js";
import { addReplicator, addServer } from "./seed.js";

/** The value of one series in a scrape, or undefined when it is absent. */
function sample(text: string, name: string, labels: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

function scrape(database: Database, clock: ManualClock): Promise<string> {
  return scrapeMetrics({ database, clock, heartbeatTimeoutSeconds: 60, requests: new RequestMetrics() });
}

forEachDatabase("separate replicators' ingest and PITs", (open) => {
  void it("a heartbeat's ingest counters are exported per replicator, the same by every instance", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    await addReplicator(database, "rep_a", "rep-a", T0);
    await addReplicator(database, "rep_b", "rep-b", T0);
    const a = 'replicator="rep-a",replicator_id="rep_a"';
    const b = 'replicator="rep-b",replicator_id="rep_b"';
    let text = await scrape(database, clock);
    assert.equal(
      sample(text, "lifeboat_replicator_ingest_bytes_total", a),
      undefined,
      "nothing reported yet",
    );

    const startedAt = new Date(T0 - 60_000).toISOString();
    const beat = (id: string, receivedBytes: number, storedBytes: number, sessions: number) =>
      recordReplicatorHeartbeat(database, clock, id, {
        state: "ACTIVE",
        ingest: { startedAt, receivedBytes, storedBytes, sessions },
      });
    assert.equal(await beat("rep_a", 1_000_000, 400_000, 3), true);
    assert.equal(await beat("rep_b", 5, 0, 1), true);
    clock.advance(5000);
    assert.equal(await beat("rep_a", 3_000_000, 900_000, 2), true, "a later heartbeat replaces the numbers");
    // Per server: bytes by server name, exported with the server's id and the replicator that applied them.
    await addServer(database, "srv_a", "db-01");
    assert.equal(
      await recordReplicatorHeartbeat(database, clock, "rep_b", {
        state: "ACTIVE",
        ingest: { startedAt, receivedBytes: 5, storedBytes: 0, sessions: 1, servers: { "db-01": 5 } },
      }),
      true,
    );
    text = await scrape(database, clock);
    assert.match(text, /^# TYPE lifeboat_replicator_ingest_bytes_total counter$/m);
    assert.match(text, /^# TYPE lifeboat_replicator_stored_bytes_total counter$/m);
    assert.match(text, /^# TYPE lifeboat_replicator_sessions gauge$/m);
    assert.equal(sample(text, "lifeboat_replicator_ingest_bytes_total", a), 3_000_000);
    assert.equal(sample(text, "lifeboat_replicator_stored_bytes_total", a), 900_000);
    assert.equal(sample(text, "lifeboat_replicator_sessions", a), 2);
    assert.equal(sample(text, "lifeboat_replicator_ingest_bytes_total", b), 5);
    assert.equal(
      sample(
        text,
        "lifeboat_server_replicated_bytes_total",
        'server="db-01",server_id="srv_a",replicator="rep-b"',
      ),
      5,
    );
    const row = await database.db
      .selectFrom("replicator_ingest")
      .selectAll()
      .where("replicator_id", "=", "rep_a")
      .executeTakeFirstOrThrow();
    assert.equal(Number(row.started_at), T0 - 60_000);
    assert.equal(Number(row.reported_at), T0 + 5000);

    // Another instance (another connection to the database) exports the same.
    const other = await open({ sameAs: database });
    assert.equal(sample(await scrape(other, clock), "lifeboat_replicator_ingest_bytes_total", a), 3_000_000);

    // Silent past the heartbeat timeout: its counters stay, its sessions read 0.
    clock.advance(120_000);
    text = await scrape(database, clock);
    assert.equal(sample(text, "lifeboat_replicator_ingest_bytes_total", a), 3_000_000);
    assert.equal(sample(text, "lifeboat_replicator_sessions", a), 0);
    // Decommissioned: gone, and its heartbeats are refused.
    await decommission(database, clock, "replicator", "rep_b");
    text = await scrape(database, clock);
    assert.equal(sample(text, "lifeboat_replicator_ingest_bytes_total", b), undefined);
    assert.equal(await beat("rep_b", 10, 0, 0), false);
  });

  void it("reported PITs enter the catalog with one pit.created event each, read from the repository", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    await addServer(database, "srv_a", "db-01");
    await addServer(database, "srv_b", "app-01");
    const repo: Repository = await newRepository();
    const pit = await writePit(repo, {
      server: "db-01",
      timeMs: T0 - 1000,
      consistency: "crash",
      disks: [],
      labels: {},
    });
    const other = await writePit(repo, {
      server: "app-01",
      timeMs: T0,
      consistency: "crash",
      disks: [],
      labels: {},
    });
    const events = () =>
      database.db.selectFrom("events").select(["type", "server_id", "payload_json"]).orderBy("seq").execute();

    assert.deepEqual(
      await recordReplicatorPits(database, clock, undefined, [{ serverId: "srv_a", pitId: pit.id }]),
      [],
      "without the repository nothing is taken: the replicator keeps it",
    );
    const missing = "0".repeat(24);
    const handled = await recordReplicatorPits(database, clock, () => Promise.resolve(repo), [
      { serverId: "srv_a", pitId: pit.id },
      { serverId: "srv_a", pitId: other.id }, // app-01's PIT, reported as db-01's
      { serverId: "srv_a", pitId: missing },
      { serverId: "srv_gone", pitId: pit.id },
    ]);
    assert.deepEqual(handled, [pit.id, other.id, missing, pit.id], "all of them may be forgotten");
    const catalog = await database.db
      .selectFrom("pits")
      .select(["id", "server_id", "repository_id"])
      .execute();
    assert.deepEqual(catalog, [{ id: pit.id, server_id: "srv_a", repository_id: repo.config.id }]);
    let e = await events();
    assert.equal(e.length, 1);
    assert.equal(e[0]!.type, "pit.created");
    assert.equal(e[0]!.server_id, "srv_a");
    assert.deepEqual(JSON.parse(e[0]!.payload_json), {
      pitId: pit.id,
      time: new Date(T0 - 1000).toISOString(),
      consistency: "crash",
      disks: 0,
    });
    // Reported again (the answer to a heartbeat was lost): nothing new.
    await recordReplicatorPits(database, clock, () => Promise.resolve(repo), [
      { serverId: "srv_a", pitId: pit.id },
    ]);
    e = await events();
    assert.equal(e.length, 1);
    await repo.close();
  });

  void it("a separate replicator's PITs are thinned by the server's retention policy, as the embedded one's", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    await addServer(database, "srv_a", "db-01");
    const repo: Repository = await newRepository();
    try {
      // Three scheduled PITs seconds apart: one ten-minute bucket of the policy keeps only one of them.
      const now = repo.clock.now();
      const made = [];
      for (let i = 0; i < 3; i++)
        made.push(
          await writePit(repo, {
            server: "db-01",
            timeMs: now - 3000 + i * 1000,
            consistency: "crash",
            disks: [],
            labels: { point: `s${i}` },
          }),
        );
      await recordReplicatorPits(
        database,
        clock,
        () => Promise.resolve(repo),
        made.map((p) => ({ serverId: "srv_a", pitId: p.id })),
      );
      const left = (await listPits(repo, { server: "db-01" })).map((p) => p.id).sort();
      assert.ok(left.length < 3, `retention forgot some: ${left.length} left`);
      assert.ok(left.includes(made[2]!.id), "the latest is kept");
      const catalog = (await database.db.selectFrom("pits").select("id").execute()).map((r) => r.id).sort();
      assert.deepEqual(catalog, left, "the catalog follows the repository");
    } finally {
      await repo.close();
    }
  });
});
