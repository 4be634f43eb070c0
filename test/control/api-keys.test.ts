/**
 * API keys: admins make keys of any role (the key shown once), list and
 * revoke them; a viewer key reads and is refused (403 AUTH_FORBIDDEN,
 * audited as denied) on every state-changing route; `lifeboat keys` and
 * `lifeboat repository` over a real server.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { runLifeboat } from "../support/cli.js";
import { forEachDatabase } from "../support/databases.js";
import { type TestApp, testApp } from "./helpers.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-keys-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface KeyView {
  id: string;
  name: string;
  role: string;
  createdBy: string | null;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

async function createKey(t: TestApp, role: string, name = `${role} for tests`) {
  const r = await t.app.inject({
    method: "POST",
    url: "/api/v1/api-keys",
    headers: t.auth("admin"),
    payload: { name, role },
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json<KeyView & { key: string }>();
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

/** Routes whose own role check is "viewer" or above and that change state: the viewer must meet 403 on each. */
const OPERATOR_WRITES = [
  "POST /api/v1/api-keys",
  "DELETE /api/v1/api-keys/{id}",
  "POST /api/v1/tokens",
  "DELETE /api/v1/tokens/{id}",
  "POST /api/v1/webhooks",
  "DELETE /api/v1/webhooks/{id}",
  "POST /api/v1/launches",
  "POST /api/v1/plans",
  "POST /api/v1/repository/verify",
  "PUT /api/v1/settings/replication",
];

forEachDatabase("API keys", (open, dialect) => {
  void it("a viewer key reads, and every state-changing route refuses it with 403 AUTH_FORBIDDEN, audited", async () => {
    const t = await testApp(await open());
    const viewer = await createKey(t, "viewer", "prometheus");
    assert.equal(viewer.role, "viewer");
    assert.match(viewer.key, /^key_[A-Za-z0-9]+\./);

    for (const url of [
      "/api/v1/servers",
      "/metrics",
      "/api/v1/events",
      "/api/v1/jobs",
      "/api/v1/repository",
    ]) {
      const r = await t.app.inject({ url, headers: bearer(viewer.key) });
      assert.equal(r.statusCode, 200, `${url}: ${r.body}`);
    }

    const spec = (await t.app.inject({ url: "/api/v1/openapi.json" })).json<{
      paths: Record<string, Record<string, unknown>>;
    }>();
    const forbidden: string[] = [];
    const other: string[] = [];
    for (const [p, methods] of Object.entries(spec.paths)) {
      for (const method of Object.keys(methods)) {
        const m = method.toUpperCase();
        if (!["POST", "PUT", "PATCH", "DELETE"].includes(m)) continue;
        // Signing out of the console is the one thing a viewer may do (its own session).
        if (`${m} ${p}` === "DELETE /api/v1/session") continue;
        const r = await t.app.inject({
          method: m as "POST",
          url: p.replace(/\{[^}]+\}/g, "x"),
          headers: bearer(viewer.key),
          ...(m === "DELETE" ? {} : { payload: {} }),
        });
        const route = `${m} ${p}`;
        assert.ok(r.statusCode >= 400 && r.statusCode < 500, `${route}: ${r.statusCode} ${r.body}`);
        const code = r.json<{ code?: string }>().code;
        if (r.statusCode === 403 && code === "AUTH_FORBIDDEN") forbidden.push(route);
        else other.push(`${route} ${r.statusCode} ${code}`);
      }
    }
    for (const route of OPERATOR_WRITES) assert.ok(forbidden.includes(route), `${route} refuses a viewer`);
    // What answers otherwise needs no API key at all (registration, sign-in) or a client certificate.
    for (const o of other) assert.match(o, / (400|401|404|429) |^POST \/api\/v1\/session 403 AUTH_CSRF$/, o);

    const denied = await t.database.db
      .selectFrom("audit_log")
      .select(["actor", "action", "result"])
      .where("actor", "=", `apikey:${viewer.id}`)
      .execute();
    assert.ok(denied.length >= OPERATOR_WRITES.length);
    assert.ok(denied.every((a) => a.result === "denied"));
    assert.ok(denied.some((a) => a.action === "apikey.create"));
  });

  void it("admins create (key shown once), list and revoke keys; the last admin key stays; others may not", async () => {
    const t = await testApp(await open());
    const op = await createKey(t, "operator", "ci pipeline");
    const list = await t.app.inject({ url: "/api/v1/api-keys", headers: t.auth("admin") });
    assert.equal(list.statusCode, 200);
    assert.ok(!list.body.includes(op.key.split(".")[1]!), "never a secret");
    const keys = list.json<{ keys: KeyView[] }>().keys;
    const listed = keys.find((k) => k.id === op.id)!;
    assert.equal(listed.name, "ci pipeline");
    assert.equal(listed.role, "operator");
    assert.match(listed.createdBy!, /^apikey:key_/);

    // The new key works for what its role allows.
    const launch = await t.app.inject({ url: "/api/v1/api-keys", headers: bearer(op.key) });
    assert.equal(launch.statusCode, 403, "keys are for admins");
    const bad = await t.app.inject({
      method: "POST",
      url: "/api/v1/api-keys",
      headers: t.auth("admin"),
      payload: { name: "x", role: "root" },
    });
    assert.equal(bad.statusCode, 400);

    const revoked = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/api-keys/${op.id}`,
      headers: t.auth("admin"),
    });
    assert.equal(revoked.statusCode, 200, revoked.body);
    assert.ok(revoked.json<KeyView>().revokedAt);
    const after = await t.app.inject({ url: "/api/v1/servers", headers: bearer(op.key) });
    assert.equal(after.statusCode, 401);
    assert.equal(after.json<{ code: string }>().code, "AUTH_INVALID");
    const missing = await t.app.inject({
      method: "DELETE",
      url: "/api/v1/api-keys/key_nope",
      headers: t.auth("admin"),
    });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json<{ code: string }>().code, "APIKEY_NOT_FOUND");

    // The test app's admin key is the only admin: it cannot go.
    const adminId = t.keys.admin.split(".")[0]!;
    const last = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/api-keys/${adminId}`,
      headers: t.auth("admin"),
    });
    assert.equal(last.statusCode, 409);
    assert.equal(last.json<{ code: string }>().code, "APIKEY_LAST_ADMIN");
    const second = await createKey(t, "admin", "second admin");
    const gone = await t.app.inject({
      method: "DELETE",
      url: `/api/v1/api-keys/${adminId}`,
      headers: bearer(second.key),
    });
    assert.equal(gone.statusCode, 200, gone.body);

    const audit = await t.database.db
      .selectFrom("audit_log")
      .select(["action", "target", "result", "details_json"])
      .where("action", "in", ["apikey.create", "apikey.revoke"])
      .orderBy("seq")
      .execute();
    assert.deepEqual(
      audit.filter((a) => a.result === "ok").map((a) => `${a.action} ${a.target}`),
      [
        `apikey.create apikey:${op.id}`,
        `apikey.revoke apikey:${op.id}`,
        `apikey.create apikey:${second.id}`,
        `apikey.revoke apikey:${adminId}`,
      ],
    );
    for (const a of audit) assert.ok(!a.details_json.includes(op.key.split(".")[1]!));
  });

  // A whole server and CLI runs take seconds: once, on SQLite.
  if (dialect === "sqlite")
    void it("lifeboat keys create|list|revoke and lifeboat repository status|verify, with a viewer key refused", async () => {
      const t = await startTlsServer(await open(), path.join(tmp, "server"));
      try {
        const api = (keyFile: string) => [
          "--endpoint",
          t.url,
          "--ca-file",
          path.join(t.dataDir, "ca.pem"),
          "--api-key-file",
          keyFile,
        ];
        const adminKey = path.join(t.dataDir, "admin-api.key");
        const viewerFile = path.join(tmp, "viewer.key");
        const made = await runLifeboat(
          ["keys", "create", "--name", "prometheus", "--out", viewerFile, "--json", ...api(adminKey)],
          tmp,
        );
        assert.equal(made.code, 0, made.stderr);
        const shown = JSON.parse(made.stdout) as KeyView & { file: string; key?: string };
        assert.equal(shown.role, "viewer", "viewer unless told otherwise");
        assert.equal(shown.key, undefined, "the key is in the file only");
        assert.equal((await stat(viewerFile)).mode & 0o777, 0o600);
        assert.match(await readFile(viewerFile, "utf8"), new RegExp(`^${shown.id}\\.`));

        const list = await runLifeboat(["keys", "list", ...api(adminKey)], tmp);
        assert.equal(list.code, 0, list.stderr);
        assert.match(list.stdout, new RegExp(`^${shown.id}\tviewer\tlast used never\tprometheus$`, "m"));

        const status = await runLifeboat(["repository", "status", "--json", ...api(viewerFile)], tmp);
        assert.equal(status.code, 0, status.stderr);
        const refused = await runLifeboat(["repository", "verify", "--json", ...api(viewerFile)], tmp);
        assert.equal(refused.code, 1);
        assert.match(refused.stderr, /AUTH_FORBIDDEN/);

        const verify = await runLifeboat(["repository", "verify", "--read-data", ...api(adminKey)], tmp);
        assert.equal(verify.code, 0, verify.stderr + verify.stdout);
        assert.match(verify.stdout, /no damage found/);
        const after = await runLifeboat(["repository", "status", ...api(viewerFile)], tmp);
        assert.match(after.stdout, /last verify .* \(data read\): no damage/);

        const revoke = await runLifeboat(["keys", "revoke", shown.id, ...api(adminKey)], tmp);
        assert.equal(revoke.code, 0, revoke.stderr);
        assert.equal(revoke.stdout.trim(), `${shown.id} revoked`);
        const late = await runLifeboat(["repository", "status", ...api(viewerFile)], tmp);
        assert.equal(late.code, 1);
        assert.match(late.stderr, /AUTH_INVALID/);
      } finally {
        await t.close();
      }
    });
});
