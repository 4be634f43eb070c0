import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { appendEvent } from "../../src/control/db/index.js";
import type { EventView } from "../../src/control/events.js";
import { sweepDisconnected } from "../../src/control/heartbeats.js";
import { WebhookDeliverer, backoffMs } from "../../src/control/webhook-delivery.js";
import { issueServerCert } from "../../src/net/index.js";
import { runLifeboat } from "../support/cli.js";
import { forEachDatabase } from "../support/databases.js";
import { type TestApp, captureLogger, testApp, testCa } from "./helpers.js";
import { addServer } from "./seed.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-webhooks-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
  status: number;
}

/** A receiver on a loopback port that answers each POST with the next of `statuses` (then 200). */
async function receiver(statuses: number[] = [], tls?: { certPem: string; keyPem: string }) {
  const received: Received[] = [];
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => (body += c));
    req.on("end", () => {
      const status = statuses.shift() ?? 200;
      received.push({ headers: req.headers, body, status });
      res.writeHead(status).end();
    });
  };
  const server = tls
    ? https.createServer({ cert: tls.certPem, key: tls.keyPem }, handler)
    : http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    received,
    url: `${tls ? "https" : "http"}://127.0.0.1:${port}/hook?token=abc`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** What a receiver does (docs/metrics-and-events.md): recompute the HMAC of "t.body" and compare. */
function verifySignature(secret: string, header: string, body: string, nowSeconds: number): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header);
  if (m === null) return false;
  if (Math.abs(nowSeconds - Number(m[1])) > 300) return false;
  const expected = createHmac("sha256", secret).update(`${m[1]}.${body}`).digest();
  return timingSafeEqual(expected, Buffer.from(m[2]!, "hex"));
}

async function addWebhook(t: TestApp, body: Record<string, unknown>) {
  const r = await t.app.inject({
    method: "POST",
    url: "/api/v1/webhooks",
    headers: t.auth("admin"),
    payload: body,
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json<{ id: string; secret: string; url: string; events: string[]; cursorSeq: number }>();
}

forEachDatabase("webhooks", (open, dialect) => {
  // A whole server and CLI runs take seconds: once, on SQLite (the PostgreSQL runs below cover the rest).
  if (dialect === "sqlite")
    void it("lifeboat server: webhooks add|list|remove, and a silent server's DISCONNECTED arrives signed", async () => {
      const database = await open();
      const t = await startTlsServer(database, path.join(tmp, `${dialect}-server`), {
        heartbeatTimeoutSeconds: 1,
      });
      const rx = await receiver();
      try {
        const api = [
          "--endpoint",
          t.url,
          "--ca-file",
          path.join(t.dataDir, "ca.pem"),
          "--api-key-file",
          path.join(t.dataDir, "admin-api.key"),
        ];
        const add = await runLifeboat(
          ["webhooks", "add", rx.url, "--events", "server.disconnected", "--json", ...api],
          tmp,
        );
        assert.equal(add.code, 0, add.stderr);
        const hook = JSON.parse(add.stdout) as { id: string; secret: string };
        const list = await runLifeboat(["webhooks", "list", ...api], tmp);
        assert.equal(list.code, 0, list.stderr);
        assert.ok(list.stdout.startsWith(`${hook.id}\t${rx.url}\tserver.disconnected\tseq `), list.stdout);
        assert.ok(!list.stdout.includes(hook.secret));

        await addServer(database, "srv_quiet", "quiet-01", { lastSeen: Date.now() - 10_000 });
        const deadline = Date.now() + 15_000;
        while (rx.received.length === 0 && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 100));
        assert.equal(rx.received.length, 1, "one event");
        const got = rx.received[0]!;
        assert.equal((JSON.parse(got.body) as EventView).server, "quiet-01");
        assert.ok(
          verifySignature(
            hook.secret,
            String(got.headers["lifeboat-signature"]),
            got.body,
            Date.now() / 1000,
          ),
        );

        const remove = await runLifeboat(["webhooks", "remove", hook.id, ...api], tmp);
        assert.equal(remove.code, 0, remove.stderr);
        assert.equal(remove.stdout.trim(), `${hook.id} removed`);
      } finally {
        await rx.close();
        await t.close();
      }
    });

  void it("API: admins add (secret once), list and remove; others are refused; bad URLs and CAs too", async () => {
    const t = await testApp(await open());
    await appendEvent(t.database, { type: "server.state", payload: {} }, t.clock);
    const made = await addWebhook(t, {
      url: "https://hooks.example.net/lifeboat?key=s3cr3t",
      events: ["job.finished"],
    });
    assert.match(made.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
    assert.equal(made.cursorSeq, 1, "starts at the newest event");
    for (const role of ["viewer", "operator"] as const) {
      const r = await t.app.inject({
        method: "POST",
        url: "/api/v1/webhooks",
        headers: t.auth(role),
        payload: { url: "https://x.example/" },
      });
      assert.equal(r.statusCode, 403);
    }
    const list = await t.app.inject({ url: "/api/v1/webhooks", headers: t.auth("admin") });
    assert.equal(list.statusCode, 200);
    assert.ok(!list.body.includes(made.secret), "never listed");
    assert.deepEqual(
      list
        .json<{ webhooks: { id: string; events: string[]; failures: number }[] }>()
        .webhooks.map((w) => [w.id, w.events, w.failures]),
      [[made.id, ["job.finished"], 0]],
    );
    for (const [payload, code] of [
      [{ url: "http://hooks.example.net/x" }, "WEBHOOK_URL_INVALID"],
      [{ url: "https://user:pw@hooks.example.net/x" }, "WEBHOOK_URL_INVALID"],
      [{ url: "not a url at all" }, "WEBHOOK_URL_INVALID"],
      [{ url: "https://hooks.example.net/x", caPem: "nope" }, "WEBHOOK_CA_INVALID"],
      [{ url: "https://hooks.example.net/x", events: ["Not A Type"] }, "REQUEST_INVALID"],
    ] as const) {
      const r = await t.app.inject({
        method: "POST",
        url: "/api/v1/webhooks",
        headers: t.auth("admin"),
        payload,
      });
      assert.equal(r.statusCode, 400, r.body);
      assert.equal(r.json<{ code: string }>().code, code);
    }
    const del = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/webhooks/${made.id}`,
      headers: t.auth("admin"),
    });
    assert.equal(del.statusCode, 200);
    const again = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/webhooks/${made.id}`,
      headers: t.auth("admin"),
    });
    assert.equal(again.statusCode, 404);
    assert.equal(again.json<{ code: string }>().code, "WEBHOOK_NOT_FOUND");
    const audit = await t.database.db.selectFrom("audit_log").select(["action", "details_json"]).execute();
    assert.ok(audit.some((a) => a.action === "webhook.create"));
    const stored = JSON.stringify(audit) + t.logs.text();
    assert.ok(!stored.includes(made.secret), "the secret is in no audit record or log line");
    assert.ok(!stored.includes("s3cr3t"), "nor the URL's query");
    await t.app.close();
  });

  void it("a DISCONNECTED server reaches an HTTPS receiver (its own CA) as a signed event", async () => {
    const t = await testApp(await open());
    const ca = await testCa();
    const rx = await receiver([], await issueServerCert(ca, { hostnames: ["127.0.0.1"] }));
    const hook = await addWebhook(t, { url: rx.url, events: ["server.disconnected"], caPem: ca.certPem });
    await addServer(t.database, "srv_a", "db-01", { lastSeen: t.clock.now() });
    await appendEvent(t.database, { type: "server.state", serverId: "srv_a", payload: {} }, t.clock); // not asked for
    t.clock.advance(300_000);
    assert.deepEqual((await sweepDisconnected(t.database, t.clock, 120_000)).servers, ["srv_a"]);
    const d = new WebhookDeliverer({
      database: t.database,
      clock: t.clock,
      logger: captureLogger().logger,
      instance: "test-1",
    });
    try {
      assert.equal(await d.tick(), 1);
      assert.equal(await d.tick(), 0, "nothing more");
    } finally {
      await d.close();
    }
    assert.equal(rx.received.length, 1);
    const got = rx.received[0]!;
    const event = JSON.parse(got.body) as EventView;
    assert.equal(event.type, "server.disconnected");
    assert.equal(event.serverId, "srv_a");
    assert.equal(event.server, "db-01");
    assert.equal(got.headers["content-type"], "application/json");
    assert.equal(got.headers["lifeboat-event"], "server.disconnected");
    assert.equal(got.headers["lifeboat-delivery"], `${hook.id}:${event.seq}`);
    const signature = String(got.headers["lifeboat-signature"]);
    assert.ok(verifySignature(hook.secret, signature, got.body, t.clock.now() / 1000), signature);
    assert.ok(
      !verifySignature(hook.secret, signature, got.body.replace("db-01", "db-02"), t.clock.now() / 1000),
    );
    assert.ok(!verifySignature(`${hook.secret}x`, signature, got.body, t.clock.now() / 1000));
    await rx.close();
    await t.app.close();
  });

  void it("a receiver that fails twice gets the event once, after backed-off retries; a restart repeats nothing", async () => {
    const t = await testApp(await open());
    const rx = await receiver([500, 503]);
    const hook = await addWebhook(t, { url: rx.url });
    await appendEvent(t.database, { type: "job.finished", payload: { jobId: "job_1" } }, t.clock);
    const opts = {
      database: t.database,
      clock: t.clock,
      logger: captureLogger().logger,
      baseBackoffMs: 1000,
      random: () => 0,
    };
    const d1 = new WebhookDeliverer({ ...opts, instance: "test-1" });
    const other = new WebhookDeliverer({ ...opts, instance: "test-2" });
    const row = () =>
      t.database.db.selectFrom("webhooks").selectAll().where("id", "=", hook.id).executeTakeFirstOrThrow();
    try {
      assert.equal(await d1.tick(), 0);
      assert.equal(rx.received.length, 1);
      assert.equal(Number((await row()).failures), 1);
      assert.equal(Number((await row()).next_attempt_at), t.clock.now() + 500, "1 s with the least jitter");
      assert.equal(await other.tick(), 0, "the lease is test-1's");
      assert.equal(await d1.tick(), 0, "not due yet");
      assert.equal(rx.received.length, 1);
      t.clock.advance(500);
      assert.equal(await d1.tick(), 0);
      assert.equal(rx.received.length, 2);
      assert.equal(Number((await row()).next_attempt_at), t.clock.now() + 1000, "doubled");
      assert.equal((await row()).last_error, "HTTP 503");
      t.clock.advance(1000);
      assert.equal(await d1.tick(), 1);
      assert.equal(await d1.tick(), 0);
    } finally {
      await d1.close();
    }
    assert.deepEqual(
      rx.received.map((r) => r.status),
      [500, 503, 200],
    );
    assert.equal(new Set(rx.received.map((r) => r.body)).size, 1, "the same event each time");
    assert.equal(Number((await row()).failures), 0);

    // Another instance takes over (d1 released the lease) from the stored cursor.
    await appendEvent(t.database, { type: "server.state", payload: { n: 2 } }, t.clock);
    try {
      assert.equal(await other.tick(), 1);
    } finally {
      await other.close();
    }
    assert.equal(rx.received.length, 4);
    assert.equal((JSON.parse(rx.received[3]!.body) as EventView).type, "server.state");
    await rx.close();
    await t.app.close();
  });

  void it("backoff: doubles from the base, capped, jitter in [0.5, 1)", () => {
    const o = { baseMs: 1000, maxMs: 60_000 };
    assert.equal(backoffMs(1, { ...o, random: () => 0.999999 }), 1000);
    assert.equal(backoffMs(3, { ...o, random: () => 0 }), 2000);
    assert.equal(backoffMs(50, { ...o, random: () => 0 }), 30_000);
    assert.equal(backoffMs(50, { ...o, random: () => 0.999999 }), 60_000);
  });
});
