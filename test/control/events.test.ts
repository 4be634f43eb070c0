import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { it } from "node:test";
import { recordPit } from "../../src/control/catalog.js";
import { appendEvent } from "../../src/control/db/index.js";
import type { EventView } from "../../src/control/events.js";
import { createJob, logJobStep, requestTerminate } from "../../src/control/jobs.js";
import { checkRpo } from "../../src/control/rpo.js";
import type { Pit } from "../../src/store/index.js";
import { forEachDatabase } from "../support/databases.js";
import { T0, testApp } from "./helpers.js";
import { addPit, addServer, setReplication } from "./seed.js";

interface Page {
  events: EventView[];
  latestSeq: number;
}

const HOUR = 3_600_000;

/** Reads a server-sent-events response until `until` says enough, or the stream ends. */
function readEvents(res: http.IncomingMessage) {
  const events: { id: number; data: EventView }[] = [];
  let buffer = "";
  let ended = false;
  const waiters: (() => void)[] = [];
  res.setEncoding("utf8");
  res.on("data", (chunk: string) => {
    buffer += chunk;
    let cut: number;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const id = /^id: (\d+)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (id !== undefined && data !== undefined)
        events.push({ id: Number(id), data: JSON.parse(data) as EventView });
    }
    waiters.splice(0).forEach((w) => w());
  });
  res.on("end", () => {
    ended = true;
    waiters.splice(0).forEach((w) => w());
  });
  return {
    events,
    ended: () => ended,
    async until(done: () => boolean, what: string): Promise<void> {
      const deadline = Date.now() + 10_000;
      while (!done()) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
    },
  };
}

forEachDatabase("events", (open, dialect) => {
  void it("JSON pages: after, limit, latest, filters by server and type; viewers may read, others not", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_a", "db-01");
    await addServer(t.database, "srv_b", "app-01");
    for (let i = 0; i < 5; i++) {
      t.clock.advance(1000);
      await appendEvent(
        t.database,
        { type: "server.state", serverId: i % 2 ? "srv_b" : "srv_a", payload: { from: "A", to: `S${i}` } },
        t.clock,
      );
    }
    await appendEvent(t.database, { type: "server.disconnected", serverId: "srv_a", payload: {} }, t.clock);
    const get = async (q: string) => {
      const r = await t.app.inject({ url: `/api/v1/events${q}`, headers: t.auth("viewer") });
      assert.equal(r.statusCode, 200, r.body);
      return r.json<Page>();
    };
    let p = await get("?after=0&limit=2");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [1, 2],
    );
    assert.equal(p.latestSeq, 6);
    assert.deepEqual(p.events[0], {
      seq: 1,
      at: new Date(T0 + 1000).toISOString(),
      type: "server.state",
      serverId: "srv_a",
      server: "db-01",
      payload: { from: "A", to: "S0" },
    });
    p = await get("?after=2&limit=2");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [3, 4],
    );
    p = await get("?limit=2");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [5, 6],
      "without after: the newest page, oldest first",
    );
    p = await get("?limit=2&before=5");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [3, 4],
    );
    p = await get("?server=app-01");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [2, 4],
    );
    p = await get("?type=server.disconnected,pit.created&after=0");
    assert.deepEqual(
      p.events.map((e) => e.seq),
      [6],
    );
    assert.equal((await t.app.inject({ url: "/api/v1/events" })).statusCode, 401);
    const bad = await t.app.inject({ url: "/api/v1/events?type=Bad%20Type", headers: t.auth("viewer") });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json<{ code: string }>().code, "REQUEST_INVALID");
    await t.app.close();
  });

  void it("a stream: resumes after Last-Event-ID, follows new events, ends when the server closes", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_a", "db-01");
    for (let i = 0; i < 3; i++)
      await appendEvent(t.database, { type: "server.state", serverId: "srv_a", payload: { i } }, t.clock);
    await t.app.listen({ host: "127.0.0.1", port: 0 });
    const port = (t.app.server.address() as AddressInfo).port;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      http
        .get(
          {
            host: "127.0.0.1",
            port,
            path: "/api/v1/events",
            headers: { ...t.auth("viewer"), accept: "text/event-stream", "last-event-id": "1" },
          },
          resolve,
        )
        .on("error", reject);
    });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers["content-type"]), /^text\/event-stream/);
    const s = readEvents(res);
    await s.until(() => s.events.length >= 2, "events 2 and 3");
    assert.deepEqual(
      s.events.map((e) => e.id),
      [2, 3],
    );
    await appendEvent(t.database, { type: "server.disconnected", serverId: "srv_a", payload: {} }, t.clock);
    await s.until(() => s.events.length >= 3, "event 4");
    assert.equal(s.events[2]!.data.type, "server.disconnected");
    assert.equal(s.events[2]!.data.seq, 4);
    // A client that goes away ends its stream on the server too.
    const ended = () => t.logs.lines.filter((l) => l.includes("event stream ended")).length;
    const gone = http.get({
      host: "127.0.0.1",
      port,
      path: "/api/v1/events",
      headers: { ...t.auth("viewer"), accept: "text/event-stream" },
    });
    gone.on("error", () => undefined);
    await new Promise((resolve) => gone.once("response", resolve));
    gone.destroy();
    const deadline = Date.now() + 5000;
    while (ended() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(ended(), 1, "the departed client's stream ended");
    await t.app.close();
    await s.until(() => s.ended(), "the end of the stream");
    assert.equal(s.events.length, 3);
  });

  void it("events for PITs, finished jobs and RPO transitions (once each)", async () => {
    const t = await testApp(await open());
    const db = t.database;
    await addServer(db, "srv_a", "db-01", { registeredAt: T0 - 10 * HOUR });
    await addServer(db, "srv_b", "app-01", { registeredAt: T0 - 10 * HOUR });
    await setReplication(db, "srv_a", { rpoMinutes: 60 });
    await addPit(db, "srv_a", "db-01", T0 - 2 * HOUR);
    await addPit(db, "srv_b", "app-01", T0 - 5 * 60_000);

    const pit: Pit = {
      format: 1,
      id: "ab".repeat(12),
      server: "db-01",
      seq: 9,
      time: new Date(T0).toISOString(),
      timeMs: T0,
      consistency: "crash",
      disks: [],
      labels: {},
    };
    const types = async () =>
      (
        await db.db
          .selectFrom("events")
          .select(["type", "server_id", "payload_json"])
          .orderBy("seq")
          .execute()
      ).map((e) => ({
        type: e.type,
        server: e.server_id,
        payload: JSON.parse(e.payload_json) as Record<string, unknown>,
      }));

    // Two instances checking at once record the transition once (SQLite: one process, one connection).
    const other = dialect === "postgres" ? await open({ sameAs: db }) : db;
    const both = await Promise.all([checkRpo(db, t.clock), checkRpo(other, t.clock)]);
    assert.deepEqual(
      both.flatMap((r) => r.breached),
      ["srv_a"],
    );
    assert.deepEqual(await checkRpo(db, t.clock), { breached: [], met: [] }, "a transition only");
    await recordPit(db, "repo", "srv_a", pit, t.clock);
    await recordPit(db, "repo", "srv_a", pit, t.clock); // already there: no second event
    assert.deepEqual(await checkRpo(db, t.clock), { breached: [], met: ["srv_a"] });

    const drill = await createJob(db, t.clock, { type: "drill", serverIds: ["srv_b"], createdBy: "test" });
    await logJobStep(db, t.clock, drill.id, { message: "go", state: "running" });
    await logJobStep(db, t.clock, drill.id, { message: "done", state: "succeeded" });
    const pending = await createJob(db, t.clock, {
      type: "recovery",
      serverIds: ["srv_a", "srv_b"],
      createdBy: "x",
    });
    await requestTerminate(db, t.clock, pending.id);

    assert.deepEqual(await types(), [
      {
        type: "server.rpo_breached",
        server: "srv_a",
        payload: { rpoSeconds: 3600, lastPitAt: new Date(T0 - 2 * HOUR).toISOString(), ageSeconds: 7200 },
      },
      {
        type: "pit.created",
        server: "srv_a",
        payload: { pitId: pit.id, time: pit.time, consistency: "crash", disks: 0 },
      },
      {
        type: "server.rpo_met",
        server: "srv_a",
        payload: { rpoSeconds: 3600, lastPitAt: pit.time, ageSeconds: 0 },
      },
      {
        type: "job.finished",
        server: "srv_b",
        payload: { jobId: drill.id, type: "drill", state: "succeeded", serverIds: ["srv_b"] },
      },
      {
        type: "job.finished",
        server: null,
        payload: { jobId: pending.id, type: "recovery", state: "terminated", serverIds: ["srv_a", "srv_b"] },
      },
    ]);
    await t.app.close();
  });
});
