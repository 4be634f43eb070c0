/**
 * The replicator pool's balancer on a real database (SQLite and PostgreSQL):
 * servers without a replicatorId setting are spread over the replicators
 * that are up, by load for capacity; a server keeps its replicator while it
 * stays up and undrained; one that stops heartbeating or is drained loses
 * its servers to the others, each move with an event; an explicit setting
 * wins; with no replicator up, servers go back to the embedded replicator.
 */
import assert from "node:assert/strict";
import { it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import type { Database } from "../../src/control/db/index.js";
import { balancePool } from "../../src/control/replicator-pool.js";
import { assignments } from "../../src/control/replicators.js";
import { writeOverride } from "../../src/control/settings.js";
import { forEachDatabase } from "../support/databases.js";

const TIMEOUT = 60_000;

async function seed(
  db: Database,
  clock: ManualClock,
  servers: { id: string; disks: number }[],
): Promise<void> {
  await db.db
    .insertInto("servers")
    .values(
      servers.map((s, i) => ({
        id: s.id,
        name: `host-${s.id}`,
        hostname: null,
        state: "CONTINUOUS",
        lag_seconds: null,
        backlog_bytes: null,
        last_seen_at: clock.now(),
        inventory_json: JSON.stringify({ disks: Array.from({ length: s.disks }, (_, d) => ({ index: d })) }),
        replicator_id: null,
        token_id: null,
        registered_at: clock.now() + i,
        decommissioned_at: null,
      })),
    )
    .execute();
}

async function addReplicator(
  db: Database,
  clock: ManualClock,
  id: string,
  capacity: object = {},
): Promise<void> {
  await db.db
    .insertInto("replicators")
    .values({
      id,
      name: `rep-${id}`,
      address: `${id}.example:443`,
      capacity_json: JSON.stringify(capacity),
      state: "ACTIVE",
      last_seen_at: clock.now(),
      registered_at: clock.now(),
      drained: 0,
      decommissioned_at: null,
      token_id: null,
    })
    .execute();
}

const beat = (db: Database, clock: ManualClock, ids: string[]) =>
  db.db
    .updateTable("replicators")
    .set({ last_seen_at: clock.now(), state: "ACTIVE" })
    .where("id", "in", ids)
    .execute();

const countBy = (m: Map<string, string | null>) => {
  const out: Record<string, number> = {};
  for (const v of m.values()) out[String(v)] = (out[String(v)] ?? 0) + 1;
  return out;
};

forEachDatabase("replicator pool", (open) => {
  void it("spreads servers by load, moves them off a silent or drained replicator, and keeps healthy ones in place", async () => {
    const db = await open();
    const clock = new ManualClock(1_800_000_000_000);
    const balance = () => balancePool(db, clock, { heartbeatTimeoutMs: TIMEOUT });
    await seed(db, clock, [
      { id: "s1", disks: 2 },
      { id: "s2", disks: 1 },
      { id: "s3", disks: 1 },
      { id: "s4", disks: 2 },
    ]);
    assert.deepEqual(await balance(), [], "no replicator: nothing to assign");
    assert.deepEqual(
      countBy(await assignments(db)),
      { null: 4 },
      "every server sends to the embedded replicator",
    );

    await addReplicator(db, clock, "a");
    await addReplicator(db, clock, "b");
    const first = await balance();
    assert.equal(first.length, 4);
    assert.ok(first.every((m) => m.from === null && m.reason === "no replicator assigned"));
    const spread = await assignments(db);
    const disksOn = (rep: string) =>
      [...spread].filter(([, r]) => r === rep).reduce((n, [s]) => n + (s === "s1" || s === "s4" ? 2 : 1), 0);
    assert.equal(disksOn("a"), 3, "load is counted in disks and shared evenly");
    assert.equal(disksOn("b"), 3);
    assert.deepEqual(await balance(), [], "a balanced pool does not move anything");

    // b stops heartbeating: after the timeout its servers move to a, and only those.
    const onB = [...spread].filter(([, r]) => r === "b").map(([s]) => s);
    clock.advance(TIMEOUT + 1000);
    await beat(db, clock, ["a"]);
    const moved = await balance();
    assert.deepEqual(moved.map((m) => m.serverId).sort(), onB.sort());
    assert.ok(moved.every((m) => m.from === "b" && m.to === "a" && m.reason === "replicator disconnected"));
    assert.deepEqual(countBy(await assignments(db)), { a: 4 });
    const events = await db.db
      .selectFrom("events")
      .selectAll()
      .where("type", "=", "server.reassigned")
      .execute();
    assert.equal(events.length, 4 + onB.length, "one event per move");

    // b is back and a is drained: everything moves to b.
    await beat(db, clock, ["a", "b"]);
    await db.db.updateTable("replicators").set({ drained: 1 }).where("id", "=", "a").execute();
    const drained = await balance();
    assert.equal(drained.length, 4);
    assert.ok(drained.every((m) => m.from === "a" && m.to === "b" && m.reason === "replicator drained"));

    // An explicit setting wins over the pool; the pool forgets that server.
    await writeOverride(db, "s1", "replication", { replicatorId: null }, "test", clock.now());
    await balance();
    assert.equal(
      (await assignments(db)).get("s1"),
      null,
      "s1 goes to the embedded replicator as its setting says",
    );
    assert.equal(
      (await db.db.selectFrom("pool_assignments").select("server_id").where("server_id", "=", "s1").execute())
        .length,
      0,
    );

    // No replicator up: pool servers go back to the embedded replicator.
    clock.advance(TIMEOUT + 1000);
    const none = await balance();
    assert.equal(none.length, 3);
    assert.ok(none.every((m) => m.to === null));
    assert.deepEqual(countBy(await assignments(db)), { null: 4 });
  });

  void it("respects a replicator's capacity in disks", async () => {
    const db = await open();
    const clock = new ManualClock(1_800_000_000_000);
    await seed(db, clock, [
      { id: "s1", disks: 1 },
      { id: "s2", disks: 1 },
      { id: "s3", disks: 1 },
    ]);
    await addReplicator(db, clock, "small", { maxDisks: 1 });
    await addReplicator(db, clock, "big", { maxDisks: 100 });
    await balancePool(db, clock, { heartbeatTimeoutMs: TIMEOUT });
    assert.deepEqual(countBy(await assignments(db)), { small: 1, big: 2 });
  });
});
