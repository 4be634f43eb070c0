import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { buildApp } from "../../src/control/app.js";
import type { Database } from "../../src/control/db/index.js";
import { recordHeartbeat } from "../../src/control/heartbeats.js";
import { forEachDatabase } from "../support/databases.js";
import { T0, captureLogger, testApp, testCa, testConfig, type TestApp } from "./helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-console-api-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const CSRF = { "x-lifeboat-csrf": "1" };

async function addServer(
  database: Database,
  name: string,
  over: Record<string, unknown> = {},
): Promise<string> {
  const id = `srv_${name}`;
  await database.db
    .insertInto("servers")
    .values({
      id,
      name,
      hostname: name,
      state: "CONTINUOUS",
      lag_seconds: 2,
      backlog_bytes: 4096,
      last_seen_at: T0,
      inventory_json: null,
      replicator_id: null,
      token_id: null,
      registered_at: T0 - 86_400_000,
      decommissioned_at: null,
      ...over,
    })
    .execute();
  return id;
}

async function signIn(t: TestApp, role: "admin" | "operator" | "viewer"): Promise<string> {
  const r = await t.app.inject({
    method: "POST",
    url: "/api/v1/session",
    headers: CSRF,
    payload: { apiKey: t.keys[role] },
  });
  assert.equal(r.statusCode, 201, r.body);
  const set = String(r.headers["set-cookie"]);
  const m = /^lifeboat_session=([A-Za-z0-9_-]+);/.exec(set);
  assert.ok(m, set);
  return `lifeboat_session=${m[1]}`;
}

forEachDatabase("console API", (open) => {
  void it("serves the page at / with a CSP that forbids other origins, and its assets", async () => {
    const t = await testApp(await open());
    const r = await t.app.inject({ url: "/" });
    assert.equal(r.statusCode, 200);
    assert.match(String(r.headers["content-type"]), /^text\/html/);
    assert.match(r.body, /<div id="app">/);
    const csp = String(r.headers["content-security-policy"]);
    for (const d of [
      "default-src 'self'",
      "script-src 'self'",
      "frame-ancestors 'none'",
      "object-src 'none'",
    ])
      assert.ok(csp.includes(d), `${d} in ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
    assert.equal(r.headers["x-content-type-options"], "nosniff");
    assert.equal(r.headers["x-frame-options"], "DENY");
    // No inline script: every script the page loads is a same-origin file.
    assert.doesNotMatch(r.body, /<script(?![^>]*\bsrc=)[^>]*>/);
    const script = /<script type="module" src="(\/assets\/[^"]+\.js)"/.exec(r.body)?.[1];
    assert.ok(script);
    const js = await t.app.inject({ url: script });
    assert.equal(js.statusCode, 200);
    assert.match(String(js.headers["content-type"]), /javascript/);
    assert.match(String(js.headers["cache-control"]), /immutable/);
    assert.equal((await t.app.inject({ url: "/assets/nope.js" })).statusCode, 404);
    // API answers carry the headers too.
    assert.equal((await t.app.inject({ url: "/healthz" })).headers["x-content-type-options"], "nosniff");
    await t.app.close();

    const { logger } = captureLogger();
    const bare = await buildApp({
      database: t.database,
      config: testConfig(),
      ca: await testCa(),
      clock: t.clock,
      logger,
      consoleDir: path.join(tmp, "missing"),
    });
    const missing = await bare.inject({ url: "/" });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json<{ code: string }>().code, "CONSOLE_NOT_BUILT");
    await bare.close();
  });

  void it("signs in with an API key: an httpOnly, Secure, SameSite=Strict cookie, stored only hashed", async () => {
    const t = await testApp(await open());
    let r = await t.app.inject({ method: "POST", url: "/api/v1/session", payload: { apiKey: t.keys.admin } });
    assert.equal(r.statusCode, 403);
    assert.equal(r.json<{ code: string }>().code, "AUTH_CSRF");
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/session",
      headers: CSRF,
      payload: { apiKey: "key_nope.AAAAAAAAAAAAAAAAAAAAAAAA" },
    });
    assert.equal(r.statusCode, 401);
    assert.equal(r.json<{ code: string }>().code, "AUTH_INVALID");
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/session",
      headers: CSRF,
      payload: { apiKey: t.keys.operator },
    });
    assert.equal(r.statusCode, 201);
    assert.equal(r.json<{ role: string }>().role, "operator");
    const set = String(r.headers["set-cookie"]);
    for (const flag of ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"])
      assert.ok(set.includes(flag), set);
    const value = /^lifeboat_session=([^;]+)/.exec(set)![1]!;
    const stored = await t.database.db.selectFrom("console_sessions").selectAll().execute();
    assert.equal(stored.length, 1);
    assert.ok(!JSON.stringify(stored).includes(value), "the cookie value is not stored");
    const cookie = `lifeboat_session=${value}`;

    r = await t.app.inject({ url: "/api/v1/session", headers: { cookie } });
    assert.equal(r.statusCode, 200);
    assert.equal(r.json<{ role: string }>().role, "operator");
    assert.equal((await t.app.inject({ url: "/api/v1/servers", headers: { cookie } })).statusCode, 200);

    // Expired: 12 hours later the cookie is refused.
    t.clock.advance(12 * 3600_000 + 1);
    r = await t.app.inject({ url: "/api/v1/servers", headers: { cookie } });
    assert.equal(r.statusCode, 401);
    assert.equal(r.json<{ code: string }>().code, "AUTH_SESSION_EXPIRED");
    await t.app.close();
  });

  void it("refuses cookie-authenticated changes without the CSRF header or from another origin", async () => {
    const t = await testApp(await open());
    const cookie = await signIn(t, "admin");
    const create = (headers: Record<string, string>) =>
      t.app.inject({
        method: "POST",
        url: "/api/v1/tokens",
        headers: { cookie, ...headers },
        payload: { role: "agent" },
      });
    let r = await create({});
    assert.equal(r.statusCode, 403);
    assert.equal(r.json<{ code: string }>().code, "AUTH_CSRF");
    r = await create({ ...CSRF, host: "lifeboat.example:8443", origin: "https://evil.example" });
    assert.equal(r.statusCode, 403);
    assert.equal(r.json<{ code: string }>().code, "AUTH_CSRF");
    r = await create({ ...CSRF, host: "lifeboat.example:8443", origin: "https://lifeboat.example:8443" });
    assert.equal(r.statusCode, 201, r.body);
    r = await create(CSRF);
    assert.equal(r.statusCode, 201);
    // A bearer key needs no CSRF header: no browser sends it by itself.
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "agent" },
    });
    assert.equal(r.statusCode, 201);
    const audit = await t.database.db.selectFrom("audit_log").select(["action", "result"]).execute();
    assert.ok(audit.some((a) => a.action === "token.create" && a.result === "denied"));
    await t.app.close();
  });

  void it("a viewer's session reads but is refused actions; sign-out and a revoked key end sessions", async () => {
    const t = await testApp(await open());
    const id = await addServer(t.database, "web-1");
    const viewer = await signIn(t, "viewer");
    assert.equal(
      (await t.app.inject({ url: "/api/v1/console/servers", headers: { cookie: viewer } })).statusCode,
      200,
    );
    const r = await t.app.inject({
      method: "POST",
      url: "/api/v1/launches",
      headers: { cookie: viewer, ...CSRF },
      payload: { servers: [id] },
    });
    assert.equal(r.statusCode, 403);
    assert.equal(r.json<{ code: string }>().code, "AUTH_FORBIDDEN");
    const out = await t.app.inject({
      method: "DELETE",
      url: "/api/v1/session",
      headers: { cookie: viewer, ...CSRF },
    });
    assert.equal(out.statusCode, 204);
    assert.match(String(out.headers["set-cookie"]), /Max-Age=0/);
    assert.equal(
      (await t.app.inject({ url: "/api/v1/session", headers: { cookie: viewer } })).statusCode,
      401,
    );

    const admin = await signIn(t, "admin");
    const keyId = t.keys.admin.split(".")[0]!;
    await t.database.db.updateTable("api_keys").set({ revoked_at: T0 }).where("id", "=", keyId).execute();
    assert.equal(
      (await t.app.inject({ url: "/api/v1/session", headers: { cookie: admin } })).statusCode,
      401,
    );
    await t.app.close();
  });

  void it("keeps a lag sample a minute per server from heartbeats, prunes after a day, serves the last hours", async () => {
    const t = await testApp(await open());
    const id = await addServer(t.database, "db-1");
    for (let s = 0; s < 10 * 60; s += 5) {
      await recordHeartbeat(t.database, t.clock, id, {
        state: "CONTINUOUS",
        lagSeconds: s / 60,
        backlogBytes: s,
      });
      t.clock.advance(5000);
    }
    let rows = await t.database.db
      .selectFrom("lag_samples")
      .selectAll()
      .where("server_id", "=", id)
      .execute();
    assert.ok(rows.length >= 9 && rows.length <= 11, `${rows.length} samples in 10 minutes`);
    const r = await t.app.inject({ url: "/api/v1/servers/db-1/lag?hours=1", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 200);
    const body = r.json<{ serverId: string; samples: { at: string; lagSeconds: number }[] }>();
    assert.equal(body.serverId, id);
    assert.equal(body.samples.length, rows.length);
    assert.ok(Date.parse(body.samples[0]!.at) < Date.parse(body.samples.at(-1)!.at));
    assert.equal(
      (await t.app.inject({ url: "/api/v1/servers/nope/lag", headers: t.auth("viewer") })).statusCode,
      404,
    );
    assert.equal(
      (await t.app.inject({ url: "/api/v1/servers/db-1/lag?hours=100", headers: t.auth("viewer") }))
        .statusCode,
      400,
    );
    t.clock.advance(27 * 3600_000);
    await recordHeartbeat(t.database, t.clock, id, { state: "CONTINUOUS", lagSeconds: 1 });
    rows = await t.database.db.selectFrom("lag_samples").selectAll().where("server_id", "=", id).execute();
    assert.equal(rows.length, 1, "older samples pruned");
    await t.app.close();
  });

  void it("the Servers overview: newest PIT, RPO met or missed, readiness, replicator", async () => {
    const t = await testApp(await open());
    const fresh = await addServer(t.database, "fresh");
    await addServer(t.database, "stale", { state: "DISCONNECTED", last_seen_at: T0 - 3600_000 });
    await addServer(t.database, "never");
    const pit = (
      id: string,
      server: string,
      seq: number,
      ageMs: number,
      consistency: "filesystem" | "crash",
    ) => ({
      id,
      repository_id: "repo",
      server_id: `srv_${server}`,
      server_name: server,
      seq,
      time_ms: T0 - ageMs,
      consistency,
      disks_json: "[]",
    });
    await t.database.db
      .insertInto("pits")
      .values([
        pit("p1", "fresh", 1, 3600_000, "crash"),
        pit("p2", "fresh", 2, 60_000, "filesystem"),
        pit("p3", "stale", 1, 3 * 3600_000, "crash"),
      ])
      .execute();
    const r = await t.app.inject({ url: "/api/v1/console/servers", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 200);
    const rows = r.json<{
      servers: {
        id: string;
        name: string;
        online: boolean;
        lastPit: { id: string; consistency: string; ageSeconds: number } | null;
        rpo: { met: boolean; targetSeconds: number };
      }[];
    }>().servers;
    const by = new Map(rows.map((s) => [s.name, s]));
    assert.equal(by.get("fresh")!.id, fresh);
    assert.deepEqual(by.get("fresh")!.lastPit, {
      id: "p2",
      time: new Date(T0 - 60_000).toISOString(),
      ageSeconds: 60,
      consistency: "filesystem",
    });
    assert.equal(by.get("fresh")!.rpo.met, true);
    assert.equal(by.get("fresh")!.rpo.targetSeconds, 30 * 60, "the rpoMinutes setting (default 30)");
    assert.equal(by.get("stale")!.rpo.met, false);
    assert.equal(by.get("stale")!.online, false);
    assert.equal(by.get("never")!.lastPit, null);
    assert.equal(by.get("never")!.rpo.met, false);
    assert.equal((await t.app.inject({ url: "/api/v1/console/servers" })).statusCode, 401);
    await t.app.close();
  });

  void it("serves a launch job's drill report and the audit log", async () => {
    const t = await testApp(await open());
    const file = path.join(tmp, `report-${Math.random()}.json`);
    await writeFile(
      file,
      JSON.stringify({ format: 1, jobId: "job_1", outcome: "succeeded", server: { id: "s", name: "web-1" } }),
    );
    const job = (id: string, result: unknown) => ({
      id,
      type: "drill",
      state: "succeeded",
      server_ids_json: "[]",
      params_json: "{}",
      result_json: JSON.stringify(result),
      created_at: T0,
      created_by: "test",
      claimed_by: null,
      claimed_at: null,
      finished_at: T0,
      updated_at: T0,
    });
    await t.database.db
      .insertInto("jobs")
      .values([job("job_1", { outputs: { servers: [{ report: file }] } }), job("job_2", null)])
      .execute();
    let r = await t.app.inject({ url: "/api/v1/jobs/job_1/report", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 200);
    assert.equal(r.json<{ reports: { outcome: string }[] }>().reports[0]!.outcome, "succeeded");
    r = await t.app.inject({ url: "/api/v1/jobs/job_2/report", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 404);
    assert.equal(r.json<{ code: string }>().code, "JOB_REPORT_NOT_FOUND");
    r = await t.app.inject({ url: "/api/v1/jobs/nope/report", headers: t.auth("viewer") });
    assert.equal(r.json<{ code: string }>().code, "JOB_NOT_FOUND");

    await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "agent" },
    });
    r = await t.app.inject({ url: "/api/v1/audit?limit=5", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 200);
    const records = r.json<{ records: { seq: number; action: string }[] }>().records;
    assert.equal(records[0]!.action, "token.create");
    await t.app.close();
  });
});
