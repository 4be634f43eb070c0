import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { type Kysely, sql } from "kysely";
import { type Database, type Schema, softWrite } from "../../src/control/db/index.js";
import { recordHeartbeat, sweepDisconnected } from "../../src/control/heartbeats.js";
import { fetchJson } from "../../src/net/index.js";
import { forEachDatabase } from "../support/databases.js";
import { T0 } from "./helpers.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-heartbeats-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function addServers(database: Database, n: number, lastSeen: number): Promise<string[]> {
  const ids = Array.from({ length: n }, (_, i) => `srv_${String(i).padStart(4, "0")}`);
  for (let i = 0; i < ids.length; i += 200)
    await database.db
      .insertInto("servers")
      .values(
        ids.slice(i, i + 200).map((id) => ({
          id,
          name: `host-${id}`,
          hostname: null,
          state: "CONTINUOUS",
          lag_seconds: null,
          backlog_bytes: null,
          last_seen_at: lastSeen,
          inventory_json: null,
          replicator_id: null,
          token_id: null,
          registered_at: lastSeen,
          decommissioned_at: null,
        })),
      )
      .execute();
  return ids;
}

const MINUTE = 60_000;

forEachDatabase("heartbeats and DISCONNECTED", (open, dialect) => {
  void it("a silent server becomes DISCONNECTED once, with one event; a heartbeat brings it back", async () => {
    const database = await open();
    const clock = new ManualClock(T0);
    const [a, b] = await addServers(database, 2, T0);
    clock.advance(1 * MINUTE);
    await recordHeartbeat(database, clock, b!, { state: "CONTINUOUS" });
    clock.advance(1 * MINUTE + 1);
    // a: silent for 2 min + 1 ms; b: for 1 min + 1 ms
    assert.deepEqual(await sweepDisconnected(database, clock, 2 * MINUTE), { servers: [a], replicators: [] });
    assert.deepEqual(await sweepDisconnected(database, clock, 2 * MINUTE), { servers: [], replicators: [] });
    clock.advance(1 * MINUTE);
    assert.deepEqual((await sweepDisconnected(database, clock, 2 * MINUTE)).servers, [b]);
    const state = async (id: string) =>
      (await database.db.selectFrom("servers").select("state").where("id", "=", id).executeTakeFirstOrThrow())
        .state;
    assert.equal(await state(a!), "DISCONNECTED");
    // back: the heartbeat's state, one state event
    assert.deepEqual(await recordHeartbeat(database, clock, a!, { state: "RESCAN" }), {
      found: true,
      previousState: "DISCONNECTED",
    });
    assert.deepEqual(await recordHeartbeat(database, clock, a!, { state: "RESCAN", lagSeconds: 4 }), {
      found: true,
    });
    assert.equal(await state(a!), "RESCAN");
    assert.deepEqual(await recordHeartbeat(database, clock, "srv_nope", { state: "RESCAN" }), {
      found: false,
    });
    const events = await database.db.selectFrom("events").selectAll().orderBy("seq").execute();
    assert.deepEqual(
      events.map((e) => [Number(e.seq), e.type, e.server_id]),
      [
        [1, "server.disconnected", a],
        [2, "server.disconnected", b],
        [3, "server.state", a],
      ],
    );
    assert.deepEqual(JSON.parse(events[0]!.payload_json), {
      lastSeenAt: new Date(T0).toISOString(),
      timeoutSeconds: 120,
    });
    assert.deepEqual(JSON.parse(events[2]!.payload_json), { from: "DISCONNECTED", to: "RESCAN" });
    // decommissioned servers are left alone
    await database.db
      .updateTable("servers")
      .set({ decommissioned_at: clock.now() })
      .where("id", "=", a!)
      .execute();
    clock.advance(10 * MINUTE);
    assert.deepEqual((await sweepDisconnected(database, clock, 2 * MINUTE)).servers, []);
  });

  void it("sweepers on several connections at once emit exactly one event per server", async () => {
    const first = await open();
    // PostgreSQL: four pools, as four control-plane processes would have. SQLite: one Database per
    // process (sqlite.ts says why), so the sweeps interleave on its one connection.
    const others =
      dialect === "postgres"
        ? [await open({ sameAs: first }), await open({ sameAs: first }), await open({ sameAs: first })]
        : [first, first, first];
    const clock = new ManualClock(T0);
    const ids = await addServers(first, 300, T0);
    clock.advance(10 * MINUTE);
    // heartbeats racing the sweepers on some of the servers
    const beating = ids.slice(0, 30);
    const results = await Promise.all([
      ...[first, ...others].map((d) => sweepDisconnected(d, clock, 2 * MINUTE)),
      ...beating.map((id, i) =>
        recordHeartbeat(others[i % others.length]!, clock, id, { state: "CONTINUOUS" }),
      ),
    ]);
    const swept = results.slice(0, 4).flatMap((r) => (r as { servers: string[] }).servers);
    assert.equal(new Set(swept).size, swept.length, "no server swept twice");
    const events = await first.db.selectFrom("events").selectAll().orderBy("seq").execute();
    const disconnected = events.filter((e) => e.type === "server.disconnected").map((e) => e.server_id);
    assert.deepEqual([...disconnected].sort(), [...swept].sort());
    assert.ok(swept.length >= 270, `${swept.length} swept`);
    // every event's seq is consecutive, and every server ended in a state it is allowed to be in
    assert.deepEqual(
      events.map((e) => Number(e.seq)),
      events.map((_, i) => i + 1),
    );
    const rows = await first.db.selectFrom("servers").select(["id", "state"]).execute();
    for (const r of rows) {
      if (!beating.includes(r.id)) assert.equal(r.state, "DISCONNECTED", r.id);
      else if (swept.includes(r.id)) {
        // swept before its heartbeat (then the heartbeat brought it back with a state event) or after
        const back = events.some((e) => e.type === "server.state" && e.server_id === r.id);
        assert.equal(r.state, back ? "CONTINUOUS" : "DISCONNECTED", r.id);
      } else assert.equal(r.state, "CONTINUOUS", r.id);
    }
  });

  void it("the running server sweeps, audits state changes and refusals, not every heartbeat", async () => {
    const database = await open();
    const clock = new ManualClock(Date.now());
    const t = await startTlsServer(database, path.join(tmp, `hb-${Math.random().toString(36).slice(2)}`), {
      clock,
      heartbeatTimeoutSeconds: 2,
    });
    try {
      const a = await t.registerAgent(await t.token("agent"), "app-1");
      const beat = (state: string) =>
        fetchJson(a.dispatcher, `${t.url}/api/v1/agent/heartbeat`, { body: { state, lagSeconds: 1 } });
      for (let i = 0; i < 20; i++) await beat("CONTINUOUS");
      await beat("BACKLOG");
      await beat("BACKLOG");
      await assert.rejects(
        fetchJson(t.operator, `${t.url}/api/v1/agent/heartbeat`, { body: { state: "X" } }),
        {
          code: "NET_CLIENT_CERT_REQUIRED",
        },
      );
      clock.advance(3000);
      // the sweep runs every second of real time when the timeout is this short
      let state = "";
      for (let i = 0; i < 50 && state !== "DISCONNECTED"; i++) {
        await delay(100);
        state = (await t.adminCall<{ state: string }>(`/api/v1/servers/${a.id}`)).state;
      }
      assert.equal(state, "DISCONNECTED");
      await beat("CONTINUOUS");
      const audit = await database.db
        .selectFrom("audit_log")
        .select(["action", "result", "details_json"])
        .where("action", "=", "agent.heartbeat")
        .orderBy("seq")
        .execute();
      assert.deepEqual(
        audit.map((x) => [x.result, x.details_json]),
        [
          ["ok", JSON.stringify({ from: "REGISTERED", to: "CONTINUOUS" })],
          ["ok", JSON.stringify({ from: "CONTINUOUS", to: "BACKLOG" })],
          ["denied", JSON.stringify({ code: "NET_CLIENT_CERT_REQUIRED", status: 401 })],
          ["ok", JSON.stringify({ from: "DISCONNECTED", to: "CONTINUOUS" })],
        ],
      );
      const events = await database.db.selectFrom("events").select("type").orderBy("seq").execute();
      assert.deepEqual(
        events.map((e) => e.type),
        ["server.state", "server.state", "server.disconnected", "server.state"],
      );
    } finally {
      await t.close();
    }
  });

  void it("soft writes skip the WAL flush for their own transaction only, and roll back whole", async () => {
    const database = await open();
    const setting = async (db: Kysely<Schema>) =>
      String(
        (await sql<{ v: string }>`SELECT current_setting('synchronous_commit') AS v`.execute(db)).rows[0]!.v,
      );
    const clock = new ManualClock(T0);
    const [a] = await addServers(database, 1, T0);
    if (dialect === "postgres") {
      assert.equal(await softWrite(database, setting), "off");
      // SET LOCAL: the pooled connection goes back to the server's default.
      for (let i = 0; i < 12; i++) assert.equal(await setting(database.db), "on");
    }
    // A failure inside leaves nothing of it behind (PostgreSQL: one transaction).
    await assert.rejects(
      softWrite(database, async (db) => {
        await db.updateTable("servers").set({ lag_seconds: 99 }).where("id", "=", a!).execute();
        throw new Error("boom");
      }),
      /boom/,
    );
    const lag = async () =>
      (
        await database.db
          .selectFrom("servers")
          .select("lag_seconds")
          .where("id", "=", a!)
          .executeTakeFirstOrThrow()
      ).lag_seconds;
    if (dialect === "postgres") assert.equal(await lag(), null);
    // The same-state heartbeat goes through it and is visible at once.
    assert.deepEqual(await recordHeartbeat(database, clock, a!, { state: "CONTINUOUS", lagSeconds: 3 }), {
      found: true,
    });
    assert.equal(Number(await lag()), 3);
  });
});
