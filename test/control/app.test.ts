import assert from "node:assert/strict";
import { it } from "node:test";
import { generateKeyAndCsr } from "../../src/net/index.js";
import { verifyAudit } from "../../src/control/audit.js";
import { forEachDatabase } from "../support/databases.js";
import { testApp } from "./helpers.js";

forEachDatabase("control plane app", (open) => {
  void it("answers /healthz, /readyz and the OpenAPI document", async () => {
    const t = await testApp(await open());
    assert.deepEqual((await t.app.inject({ url: "/healthz" })).json(), { status: "ok", time: t.clock.now() });
    assert.deepEqual((await t.app.inject({ url: "/readyz" })).json(), { status: "ready" });
    const doc = (await t.app.inject({ url: "/api/v1/openapi.json" })).json<{
      openapi: string;
      paths: Record<string, Record<string, { responses?: Record<string, unknown>; requestBody?: unknown }>>;
    }>();
    assert.match(doc.openapi, /^3\./);
    for (const p of [
      "/api/v1/tokens",
      "/api/v1/tokens/{id}",
      "/api/v1/register",
      "/api/v1/servers",
      "/api/v1/servers/{id}",
      "/api/v1/agent/heartbeat",
      "/healthz",
      "/readyz",
    ])
      assert.ok(doc.paths[p], `${p} documented`);
    for (const [p, ops] of Object.entries(doc.paths))
      for (const [m, op] of Object.entries(ops)) {
        assert.ok(op.responses && Object.keys(op.responses).length > 0, `${m} ${p} has response schemas`);
        if (m === "post") assert.ok(op.requestBody, `${m} ${p} has a request schema`);
      }
    await t.app.close();
  });

  void it("readyz says 503 NOT_READY when the database is gone", async () => {
    const database = await open();
    const t = await testApp(database);
    await database.close();
    const r = await t.app.inject({ url: "/readyz" });
    assert.equal(r.statusCode, 503);
    assert.equal(r.json<{ code: string }>().code, "NOT_READY");
    await t.app.close();
  });

  void it("errors: 400 naming the field, 404 for unknown routes, 413 for big bodies, JSON always", async () => {
    const t = await testApp(await open(), { bodyLimitBytes: 4096 });
    t.app.get("/test/boom", { schema: { response: { 200: { type: "object" } } } }, () => {
      throw new Error("secret internals: /etc/shadow");
    });
    let r = await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "wizard" },
    });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json<{ code: string }>().code, "REQUEST_INVALID");
    assert.match(r.json<{ message: string }>().message, /role/);
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "agent", extra: 1 },
    });
    assert.equal(r.statusCode, 400);
    assert.match(r.json<{ message: string }>().message, /extra/);
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "agent", ttlSeconds: 90000 },
    });
    assert.equal(r.statusCode, 400);
    assert.match(r.json<{ message: string }>().message, /ttlSeconds/);
    r = await t.app.inject({ method: "POST", url: "/api/v1/register", payload: {} });
    assert.equal(r.statusCode, 400);
    assert.match(r.json<{ message: string }>().message, /token/);
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/register",
      headers: { "content-type": "application/json" },
      payload: "{nope",
    });
    assert.equal(r.statusCode, 400);
    r = await t.app.inject({ url: "/test/boom" });
    assert.equal(r.statusCode, 500);
    assert.equal(r.json<{ code: string }>().code, "INTERNAL");
    assert.ok(!r.body.includes("internals"));
    assert.ok(t.logs.text().includes("secret internals"), "the 500 is logged");
    r = await t.app.inject({ url: "/api/v1/nothing" });
    assert.equal(r.statusCode, 404);
    assert.deepEqual(Object.keys(r.json<object>()).sort(), ["code", "hint", "message"]);
    assert.equal(r.json<{ code: string }>().code, "NOT_FOUND");
    r = await t.app.inject({
      method: "POST",
      url: "/api/v1/register",
      payload: { token: "x", csr: "y".repeat(8000), hostname: "h" },
    });
    assert.equal(r.statusCode, 413);
    assert.equal(r.json<{ code: string }>().code, "REQUEST_TOO_LARGE");
    await t.app.close();
  });

  void it("authorization: no key 401, bad key 401, viewer refused on admin routes 403, and refusals audited", async () => {
    const t = await testApp(await open());
    const routes = [
      { method: "POST" as const, url: "/api/v1/tokens", payload: { role: "agent" } },
      { method: "GET" as const, url: "/api/v1/tokens" },
      { method: "DELETE" as const, url: "/api/v1/tokens/tok_x" },
    ];
    for (const r of routes) {
      let res = await t.app.inject(r);
      assert.equal(res.statusCode, 401, `${r.method} ${r.url}`);
      assert.equal(res.json<{ code: string }>().code, "AUTH_REQUIRED");
      res = await t.app.inject({
        ...r,
        headers: { authorization: "Bearer key_abc.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" },
      });
      assert.equal(res.statusCode, 401);
      assert.equal(res.json<{ code: string }>().code, "AUTH_INVALID");
      for (const role of ["viewer", "operator"] as const) {
        res = await t.app.inject({ ...r, headers: t.auth(role) });
        assert.equal(res.statusCode, 403, `${role} ${r.method} ${r.url}`);
        assert.equal(res.json<{ code: string }>().code, "AUTH_FORBIDDEN");
      }
    }
    // refused before the body is even read: a bad body without a key is still 401
    const early = await t.app.inject({ method: "POST", url: "/api/v1/tokens", payload: { role: "wizard" } });
    assert.equal(early.statusCode, 401);
    for (const url of ["/api/v1/servers", "/api/v1/servers/srv_x"]) {
      assert.equal((await t.app.inject({ url })).statusCode, 401);
      assert.notEqual((await t.app.inject({ url, headers: t.auth("viewer") })).statusCode, 401);
    }
    // agent route over plain HTTP (no TLS, so no certificate)
    const hb = await t.app.inject({
      method: "POST",
      url: "/api/v1/agent/heartbeat",
      payload: { state: "CONTINUOUS" },
    });
    assert.equal(hb.statusCode, 401);
    assert.equal(hb.json<{ code: string }>().code, "NET_CLIENT_CERT_REQUIRED");
    const audit = await t.database.db.selectFrom("audit_log").selectAll().orderBy("seq").execute();
    assert.ok(
      audit.some(
        (a) => a.action === "token.create" && a.result === "denied" && a.actor.startsWith("apikey:"),
      ),
    );
    assert.ok(audit.some((a) => a.action === "agent.heartbeat" && a.result === "denied"));
    assert.equal((await verifyAudit(t.database)).ok, true);
    await t.app.close();
  });

  void it("token lifecycle: create shows the secret once, list hides it, revoke", async () => {
    const t = await testApp(await open());
    const made = await t.app.inject({
      method: "POST",
      url: "/api/v1/tokens",
      headers: t.auth("admin"),
      payload: { role: "agent", serverName: "web-1" },
    });
    assert.equal(made.statusCode, 201);
    const tok = made.json<{
      id: string;
      token: string;
      usesAllowed: number;
      expiresAt: string;
      serverName: string;
    }>();
    assert.equal(tok.usesAllowed, 1);
    assert.equal(tok.serverName, "web-1");
    assert.equal(Date.parse(tok.expiresAt), t.clock.now() + 3600_000);
    const [id, secret] = tok.token.split(".");
    assert.equal(id, tok.id);
    assert.ok(Buffer.from(secret!, "base64url").length >= 16);
    const list = await t.app.inject({ url: "/api/v1/tokens", headers: t.auth("admin") });
    assert.equal(list.statusCode, 200);
    assert.ok(!list.body.includes(secret!));
    assert.deepEqual(
      list.json<{ tokens: { id: string }[] }>().tokens.map((x) => x.id),
      [tok.id],
    );
    const row = await t.database.db.selectFrom("install_tokens").selectAll().executeTakeFirstOrThrow();
    assert.ok(!JSON.stringify(row).includes(secret!));
    const del = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/tokens/${tok.id}`,
      headers: t.auth("admin"),
    });
    assert.equal(del.statusCode, 200);
    assert.ok(del.json<{ revokedAt: string | null }>().revokedAt);
    const missing = await t.app.inject({
      method: "DELETE",
      url: "/api/v1/tokens/tok_nope",
      headers: t.auth("admin"),
    });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json<{ code: string }>().code, "TOKEN_NOT_FOUND");
    const audit = await t.database.db.selectFrom("audit_log").selectAll().orderBy("seq").execute();
    assert.deepEqual(
      audit.map((a) => [a.action, a.result]),
      [
        ["token.create", "ok"],
        ["token.revoke", "ok"],
        ["token.revoke", "failed"],
      ],
    );
    assert.ok(!JSON.stringify(audit).includes(secret!));
    await t.app.close();
  });

  void it("registration: redeems, is idempotent per key, refuses used, expired, revoked and unknown tokens", async () => {
    const t = await testApp(await open());
    const create = async (payload: object) =>
      (
        await t.app.inject({ method: "POST", url: "/api/v1/tokens", headers: t.auth("admin"), payload })
      ).json<{ id: string; token: string }>();
    const register = (token: string, csr: string, hostname = "web-1") =>
      t.app.inject({
        method: "POST",
        url: "/api/v1/register",
        payload: { token, csr, hostname, inventory: { os: "linux" } },
      });
    const { csrPem } = await generateKeyAndCsr({ commonName: "web-1" });
    const tok = await create({ role: "agent" });
    const first = await register(tok.token, csrPem);
    assert.equal(first.statusCode, 201, first.body);
    const a = first.json<{ serverId: string; serverName: string; certificatePem: string; caPem: string }>();
    assert.equal(a.serverName, "web-1");
    assert.equal(a.caPem, t.ca.certPem);
    const again = await register(tok.token, csrPem);
    assert.equal(again.statusCode, 201);
    assert.equal(again.json<{ serverId: string }>().serverId, a.serverId);
    assert.equal((await t.database.db.selectFrom("servers").selectAll().execute()).length, 1);
    assert.equal((await t.database.db.selectFrom("certificates").selectAll().execute()).length, 2);
    const other = await generateKeyAndCsr({ commonName: "web-2" });
    const used = await register(tok.token, other.csrPem, "web-2");
    assert.equal(used.statusCode, 401);
    assert.equal(used.json<{ code: string }>().code, "TOKEN_USED");

    const expiring = await create({ role: "agent", ttlSeconds: 60 });
    t.clock.advance(61_000);
    const expired = await register(expiring.token, other.csrPem, "web-2");
    assert.equal(expired.json<{ code: string }>().code, "TOKEN_EXPIRED");
    const revoked = await create({ role: "agent" });
    await t.app.inject({ method: "DELETE", url: `/api/v1/tokens/${revoked.id}`, headers: t.auth("admin") });
    assert.equal(
      (await register(revoked.token, other.csrPem, "web-2")).json<{ code: string }>().code,
      "TOKEN_REVOKED",
    );
    const wrong = await register(`${revoked.id}.${"A".repeat(43)}`, other.csrPem, "web-2");
    assert.equal(wrong.statusCode, 401);
    assert.equal(wrong.json<{ code: string }>().code, "TOKEN_INVALID");
    assert.equal(
      (await register("garbage", other.csrPem, "web-2")).json<{ code: string }>().code,
      "TOKEN_INVALID",
    );
    const replicator = await create({ role: "replicator" });
    assert.equal(
      (await register(replicator.token, other.csrPem, "web-2")).json<{ code: string }>().code,
      "TOKEN_INVALID",
    );
    const good = await create({ role: "agent" });
    const badCsr = await register(
      good.token,
      "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
      "web-2",
    );
    assert.equal(badCsr.statusCode, 400);
    assert.equal(badCsr.json<{ code: string }>().code, "NET_CSR_INVALID");
    const taken = await register(good.token, other.csrPem, "web-1");
    assert.equal(taken.statusCode, 409);
    assert.equal(taken.json<{ code: string }>().code, "SERVER_NAME_TAKEN");
    // the refusals spent nothing
    const goodRow = await t.database.db
      .selectFrom("install_tokens")
      .select("uses_count")
      .where("id", "=", good.id)
      .executeTakeFirstOrThrow();
    assert.equal(Number(goodRow.uses_count), 0);
    const audit = await t.database.db
      .selectFrom("audit_log")
      .selectAll()
      .where("action", "=", "agent.register")
      .orderBy("seq")
      .execute();
    assert.deepEqual(
      audit.map((x) => x.result),
      ["ok", "ok", "denied", "denied", "denied", "denied", "denied", "denied", "failed", "failed"],
    );
    assert.ok(audit.some((x) => x.details_json.includes("TOKEN_EXPIRED")));
    for (const x of [tok, expiring, revoked, good])
      assert.ok(!JSON.stringify(audit).includes(x.token.split(".")[1]!));
    await t.app.close();
  });

  void it("50 concurrent redeems of a single-use token create exactly one server", async () => {
    const t = await testApp(await open());
    const tok = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/tokens",
        headers: t.auth("admin"),
        payload: { role: "agent" },
      })
    ).json<{ token: string }>();
    const csrs = await Promise.all(
      Array.from({ length: 50 }, (_, i) => generateKeyAndCsr({ commonName: `h${i}` })),
    );
    const results = await Promise.all(
      csrs.map((c, i) =>
        t.app.inject({
          method: "POST",
          url: "/api/v1/register",
          payload: { token: tok.token, csr: c.csrPem, hostname: `host-${i}` },
        }),
      ),
    );
    const codes = results.map((r) => r.statusCode);
    assert.equal(
      codes.filter((c) => c === 201).length,
      1,
      JSON.stringify(results.filter((r) => r.statusCode !== 401).map((r) => r.body)),
    );
    assert.equal(codes.filter((c) => c === 401).length, 49);
    assert.ok(
      results
        .filter((r) => r.statusCode === 401)
        .every((r) => r.json<{ code: string }>().code === "TOKEN_USED"),
    );
    assert.equal((await t.database.db.selectFrom("servers").selectAll().execute()).length, 1);
    assert.equal((await t.database.db.selectFrom("certificates").selectAll().execute()).length, 1);
    await t.app.close();
  });

  void it("rate-limits registration with 429 RATE_LIMITED", async () => {
    const CSR = (await generateKeyAndCsr({ commonName: "x" })).csrPem;
    const t = await testApp(await open(), { registerRateLimitPerMinute: 3 });
    const codes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await t.app.inject({
        method: "POST",
        url: "/api/v1/register",
        payload: { token: "garbage", csr: CSR, hostname: "h" },
      });
      codes.push(r.statusCode);
      if (r.statusCode === 429) assert.equal(r.json<{ code: string }>().code, "RATE_LIMITED");
    }
    assert.deepEqual(codes, [401, 401, 401, 429, 429]);
    await t.app.close();
  });

  void it("servers: operators of any role list and show; unknown id 404", async () => {
    const t = await testApp(await open());
    const tok = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/tokens",
        headers: t.auth("admin"),
        payload: { role: "agent" },
      })
    ).json<{ token: string }>();
    const { csrPem } = await generateKeyAndCsr({ commonName: "db-1" });
    const reg = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/register",
        payload: { token: tok.token, csr: csrPem, hostname: "db-1" },
      })
    ).json<{ serverId: string }>();
    const list = await t.app.inject({ url: "/api/v1/servers", headers: t.auth("viewer") });
    assert.equal(list.statusCode, 200);
    const servers = list.json<{ servers: { id: string; name: string; state: string; online: boolean }[] }>()
      .servers;
    assert.deepEqual(
      servers.map((s) => [s.id, s.name, s.state, s.online]),
      [[reg.serverId, "db-1", "REGISTERED", true]],
    );
    for (const key of [reg.serverId, "db-1"]) {
      const one = await t.app.inject({ url: `/api/v1/servers/${key}`, headers: t.auth("operator") });
      assert.equal(one.statusCode, 200);
      assert.equal(one.json<{ id: string }>().id, reg.serverId);
    }
    const none = await t.app.inject({ url: "/api/v1/servers/srv_nope", headers: t.auth("viewer") });
    assert.equal(none.statusCode, 404);
    assert.equal(none.json<{ code: string }>().code, "SERVER_NOT_FOUND");
    await t.app.close();
  });
});
