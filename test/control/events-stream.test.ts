import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { it } from "node:test";
import { forEachDatabase } from "../support/databases.js";
import { type TestApp, testApp } from "./helpers.js";
import { addServer } from "./seed.js";
import { openSse } from "./sse-client.js";

async function listen(t: TestApp): Promise<number> {
  await t.app.listen({ host: "127.0.0.1", port: 0 });
  return (t.app.server.address() as AddressInfo).port;
}

async function decommission(t: TestApp, server: string): Promise<void> {
  const r = await t.app.inject({
    method: "POST",
    url: `/api/v1/servers/${server}/decommission`,
    headers: t.auth("admin"),
    payload: {},
  });
  assert.equal(r.statusCode, 200, r.body);
}

/** The console's way in: a session cookie from signing in with a key. */
async function consoleCookie(t: TestApp, role: "viewer" | "admin"): Promise<string> {
  const r = await t.app.inject({
    method: "POST",
    url: "/api/v1/session",
    headers: { "x-lifeboat-csrf": "1" },
    payload: { apiKey: t.keys[role] },
  });
  assert.equal(r.statusCode, 201, r.body);
  return /^(lifeboat_session=[A-Za-z0-9_-]+);/.exec(String(r.headers["set-cookie"]))![1]!;
}

/**
 * The event stream (GET /api/v1/events, Accept: text/event-stream) read over
 * a real connection, as the console's EventSource and `curl -N` read it.
 */
forEachDatabase("event stream", (open, dialect) => {
  void it("refuses no key and a bad key; a viewer key and a console cookie get an action's event; Last-Event-ID resumes", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_a", "db-01");
    await addServer(t.database, "srv_b", "app-01");
    await addServer(t.database, "srv_c", "web-01");
    const port = await listen(t);

    const none = await openSse(port, "/api/v1/events", {});
    assert.equal(none.res.statusCode, 401);
    assert.doesNotMatch(String(none.res.headers["content-type"]), /event-stream/);
    const bad = await openSse(port, "/api/v1/events", { authorization: "Bearer key_nope.nothing" });
    assert.equal(bad.res.statusCode, 401);
    none.close();
    bad.close();

    const byKey = await openSse(port, "/api/v1/events", t.auth("viewer"));
    const byCookie = await openSse(port, "/api/v1/events", { cookie: await consoleCookie(t, "viewer") });
    for (const s of [byKey, byCookie]) {
      assert.equal(s.res.statusCode, 200);
      assert.match(String(s.res.headers["content-type"]), /^text\/event-stream/);
      assert.equal(s.res.headers["cache-control"], "no-cache, no-transform");
      await s.until(() => s.comments.some((c) => c.startsWith("from ")), "the opening comment");
    }
    await decommission(t, "db-01");
    for (const s of [byKey, byCookie]) {
      await s.until(() => s.events.length >= 1, "the decommission event");
      assert.equal(s.events[0]!.data.type, "server.decommissioned");
      assert.equal(s.events[0]!.data.serverId, "srv_a");
      assert.equal(s.events[0]!.data.server, "db-01");
      assert.equal(s.events[0]!.id, s.events[0]!.data.seq);
    }
    // The connection drops; two more things happen; the reconnection names the last id it saw.
    const last = byKey.events.at(-1)!.id;
    byKey.close();
    await decommission(t, "app-01");
    await decommission(t, "web-01");
    const again = await openSse(port, "/api/v1/events", {
      ...t.auth("viewer"),
      "last-event-id": String(last),
    });
    await again.until(() => again.events.length >= 2, "the two missed events");
    assert.deepEqual(
      again.events.map((e) => e.data.serverId),
      ["srv_b", "srv_c"],
    );
    assert.deepEqual(
      again.events.map((e) => e.id),
      [last + 1, last + 2],
      "nothing missed, nothing twice",
    );
    // ?after= does the same for a client that cannot set the header (a new EventSource).
    const after = await openSse(
      port,
      `/api/v1/events?after=${last}&type=server.decommissioned`,
      t.auth("viewer"),
    );
    await after.until(() => after.events.length >= 2, "the events after the seq");
    again.close();
    after.close();
    byCookie.close();
    await t.app.close();
  });

  void it("a stream ends when its key is revoked or its console session ends", async () => {
    const t = await testApp(await open());
    const port = await listen(t);
    const byKey = await openSse(port, "/api/v1/events", t.auth("viewer"));
    const cookie = await consoleCookie(t, "admin");
    const byCookie = await openSse(port, "/api/v1/events", { cookie });
    await byKey.until(() => byKey.comments.length > 0, "the stream's start");
    await byCookie.until(() => byCookie.comments.length > 0, "the stream's start");
    const viewerId = t.keys.viewer.split(".")[0]!;
    const revoked = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/api-keys/${viewerId}`,
      headers: t.auth("admin"),
    });
    assert.equal(revoked.statusCode, 200, revoked.body);
    const out = await t.app.inject({
      method: "DELETE",
      url: "/api/v1/session",
      headers: { cookie, "x-lifeboat-csrf": "1" },
    });
    assert.ok(out.statusCode < 300, out.body);
    // The streams look again after 30 s (of the app's clock).
    t.clock.advance(31_000);
    await byKey.until(() => byKey.ended(), "the revoked key's stream to end", 5000);
    await byCookie.until(() => byCookie.ended(), "the ended session's stream to end", 5000);
    const refused = await openSse(port, "/api/v1/events", t.auth("viewer"));
    assert.equal(refused.res.statusCode, 401);
    refused.close();
    await t.app.close();
  });

  void it(
    "two instances on one database: a stream on one carries what happens through the other",
    dialect === "postgres" ? {} : { skip: "one SQLite file has one control-plane instance" },
    async () => {
      const a = await testApp(await open());
      await addServer(a.database, "srv_a", "db-01");
      const b = await testApp(await open({ sameAs: a.database }));
      const port = await listen(b);
      const s = await openSse(port, "/api/v1/events", b.auth("viewer"));
      await s.until(() => s.comments.length > 0, "the stream's start");
      await decommission(a, "db-01");
      await s.until(() => s.events.length >= 1, "the event written by the other instance");
      assert.equal(s.events[0]!.data.type, "server.decommissioned");
      s.close();
      await b.app.close();
      await a.app.close();
    },
  );
});
