import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { it } from "node:test";
import { initServer } from "../../src/control/init.js";
import { startServer } from "../../src/control/start.js";
import type { Database } from "../../src/control/db/index.js";
import { BUILTIN_SETTINGS, effectiveSettings } from "../../src/control/settings.js";

/** The launch fields this file checks (the others keep their built-ins). */
function pick(o: Record<string, unknown>): Record<string, unknown> {
  const { target, bootProfile, outputDir, postLaunchChecks } = o;
  return { target, bootProfile, outputDir, postLaunchChecks };
}
import { parseAssignments } from "../../src/cli/settings.js";
import { connectionUrl, forEachDatabase } from "../support/databases.js";
import { T0, type TestApp, captureLogger, testApp } from "./helpers.js";
import { runLifeboat } from "../support/cli.js";

function lifeboat(args: string[], home: string): ReturnType<typeof runLifeboat> {
  return runLifeboat(args, home);
}

interface View {
  kind: string;
  scope: string;
  settings: Record<string, unknown>;
  sources: Record<string, string>;
  overrides: Record<string, unknown>;
}

async function addServer(database: Database, id: string, name: string): Promise<void> {
  await database.db
    .insertInto("servers")
    .values({
      id,
      name,
      hostname: null,
      state: "CONTINUOUS",
      lag_seconds: null,
      backlog_bytes: null,
      last_seen_at: null,
      inventory_json: null,
      replicator_id: null,
      token_id: null,
      registered_at: T0,
      decommissioned_at: null,
    })
    .execute();
}

type Role = "admin" | "operator" | "viewer";
const get = async (t: TestApp, url: string, role: Role = "viewer") => {
  const r = await t.app.inject({ url, headers: t.auth(role) });
  assert.equal(r.statusCode, 200, r.body);
  return r.json<View>();
};
const put = (t: TestApp, url: string, payload: Record<string, unknown>, role: Role = "admin") =>
  t.app.inject({ method: "PUT", url, headers: t.auth(role), payload });

forEachDatabase("settings", (open) => {
  void it("built-in defaults, for the template and every server", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_1", "web-01");
    const d = await get(t, "/api/v1/settings/replication");
    assert.equal(d.scope, "default");
    assert.deepEqual(d.settings, {
      bandwidthMbps: null,
      pitIntervalMinutes: 10,
      retention: "10m:1h,1h:24h,1d:7d",
      consistency: "filesystem",
      preFreezeHook: null,
      postThawHook: null,
      replicatorId: null,
      tags: [],
      rpoMinutes: 30,
    });
    assert.deepEqual(d.overrides, {});
    const s = await get(t, "/api/v1/servers/srv_1/settings/launch");
    assert.deepEqual(s.settings, BUILTIN_SETTINGS.launch);
    assert.ok(Object.values(s.sources).every((v) => v === "builtin"));
    assert.equal((await get(t, "/api/v1/servers/web-01/settings/launch")).scope, "srv_1", "by name too");
    const missing = await t.app.inject({
      url: "/api/v1/servers/nope/settings/launch",
      headers: t.auth("viewer"),
    });
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json<{ code: string }>().code, "SERVER_NOT_FOUND");
    await t.app.close();
  });

  void it("template, server override, null removes, sources reported, changes audited", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_1", "web-01");
    await addServer(t.database, "srv_2", "web-02");
    let r = await put(t, "/api/v1/settings/replication", { bandwidthMbps: 100, consistency: "crash" });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(r.json<View>().overrides, { bandwidthMbps: 100, consistency: "crash" });
    for (const id of ["srv_1", "srv_2"]) {
      const s = await get(t, `/api/v1/servers/${id}/settings/replication`);
      assert.equal(s.settings.bandwidthMbps, 100);
      assert.equal(s.sources.bandwidthMbps, "default");
      assert.equal(s.sources.pitIntervalMinutes, "builtin");
    }
    r = await put(
      t,
      "/api/v1/servers/srv_1/settings/replication",
      { bandwidthMbps: 20, tags: ["db"], retention: "5m:1h" },
      "operator",
    );
    assert.equal(r.statusCode, 200, r.body);
    let s = r.json<View>();
    assert.equal(s.settings.bandwidthMbps, 20);
    assert.equal(s.sources.bandwidthMbps, "server");
    assert.equal(s.settings.consistency, "crash");
    assert.equal(s.sources.consistency, "default");
    assert.deepEqual(s.settings.tags, ["db"]);
    assert.equal((await get(t, "/api/v1/servers/srv_2/settings/replication")).settings.bandwidthMbps, 100);
    // "unlimited" overrides the template's cap; null then removes the override again
    r = await put(
      t,
      "/api/v1/servers/srv_1/settings/replication",
      { bandwidthMbps: "unlimited" },
      "operator",
    );
    assert.equal(r.json<View>().settings.bandwidthMbps, null);
    assert.equal(r.json<View>().sources.bandwidthMbps, "server");
    r = await put(
      t,
      "/api/v1/servers/srv_1/settings/replication",
      { bandwidthMbps: null, tags: null },
      "operator",
    );
    s = r.json<View>();
    assert.equal(s.settings.bandwidthMbps, 100);
    assert.equal(s.sources.bandwidthMbps, "default");
    assert.deepEqual(s.overrides, { retention: "5m:1h" });
    const eff = await effectiveSettings(t.database, "srv_1", "replication");
    assert.equal(eff.sources.retention, "server");
    assert.equal(eff.settings.retention, "5m:1h");
    // null in the template goes back to the built-in
    r = await put(t, "/api/v1/settings/replication", { bandwidthMbps: null });
    assert.equal(r.json<View>().settings.bandwidthMbps, null);
    assert.equal(r.json<View>().sources.bandwidthMbps, "builtin");
    const audit = await t.database.db
      .selectFrom("audit_log")
      .select(["action", "target", "result", "details_json"])
      .where("action", "like", "settings.%")
      .orderBy("seq")
      .execute();
    assert.equal(audit.length, 5);
    assert.equal(audit[1]!.action, "settings.replication.server");
    assert.equal(audit[1]!.target, "server:srv_1");
    assert.deepEqual(JSON.parse(audit[1]!.details_json), {
      old: {},
      new: { bandwidthMbps: 20, tags: ["db"], retention: "5m:1h" },
    });
    await t.app.close();
  });

  void it("validation: 400 naming the field", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_1", "web-01");
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ retention: "5m:1m" }, /retention/],
      [{ consistency: "quantum" }, /consistency/],
      [{ pitIntervalMinutes: 0 }, /pitIntervalMinutes/],
      [{ bandwidthMbps: -1 }, /bandwidthMbps/],
      [{ colour: "red" }, /colour/],
      [{ tags: [1] }, /tags/],
    ];
    for (const [payload, field] of cases) {
      const r = await put(t, "/api/v1/servers/srv_1/settings/replication", payload, "operator");
      assert.equal(r.statusCode, 400, JSON.stringify(payload));
      assert.equal(r.json<{ code: string }>().code, "REQUEST_INVALID");
      assert.match(r.json<{ message: string }>().message, field);
    }
    const r = await put(t, "/api/v1/settings/launch", { target: "floppy" });
    assert.equal(r.statusCode, 400);
    assert.match(r.json<{ message: string }>().message, /target/);
    assert.deepEqual((await get(t, "/api/v1/servers/srv_1/settings/replication")).overrides, {});
    await t.app.close();
  });

  void it("roles: viewer reads, operator sets servers, admin sets the template", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_1", "web-01");
    for (const url of ["/api/v1/settings/launch", "/api/v1/servers/srv_1/settings/launch"]) {
      assert.equal((await t.app.inject({ url })).statusCode, 401);
      await get(t, url, "viewer");
    }
    const server = "/api/v1/servers/srv_1/settings/launch";
    const template = "/api/v1/settings/launch";
    assert.equal((await put(t, server, { target: "qemu" }, "viewer")).statusCode, 403);
    assert.equal((await put(t, template, { target: "qemu" }, "viewer")).statusCode, 403);
    assert.equal((await put(t, template, { target: "qemu" }, "operator")).statusCode, 403);
    assert.equal((await put(t, server, { target: "qemu" }, "operator")).statusCode, 200);
    assert.equal((await put(t, server, { outputDir: "/srv/out" }, "admin")).statusCode, 200);
    assert.equal((await put(t, template, { bootProfile: "xen" }, "admin")).statusCode, 200);
    const s = await get(t, server);
    assert.deepEqual(pick(s.settings), {
      target: "qemu",
      bootProfile: "xen",
      outputDir: "/srv/out",
      postLaunchChecks: [],
    });
    assert.deepEqual(pick(s.sources), {
      target: "server",
      bootProfile: "default",
      outputDir: "server",
      postLaunchChecks: "builtin",
    });
    const denied = await t.database.db
      .selectFrom("audit_log")
      .select("result")
      .where("action", "like", "settings.%")
      .where("result", "=", "denied")
      .execute();
    assert.equal(denied.length, 3);
    await t.app.close();
  });

  void it("cli: settings set and get over HTTPS", async () => {
    const database = await open();
    const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-settings-cli-"));
    try {
      const init = await initServer({
        dataDir: path.join(dir, "d"),
        databaseUrl: await connectionUrl(database),
        hostnames: ["127.0.0.1"],
      });
      await addServer(database, "srv_1", "web-01");
      const { logger } = captureLogger();
      const server = await startServer(init.dataDir, { listen: "127.0.0.1:0", logger, handleSignals: false });
      try {
        const api = [
          "--endpoint",
          server.url,
          "--ca-file",
          path.join(init.dataDir, "ca.pem"),
          "--api-key-file",
          path.join(init.dataDir, "admin-api.key"),
        ];
        const set = await lifeboat(
          [
            "settings",
            "set",
            "--server",
            "web-01",
            "--kind",
            "replication",
            "bandwidthMbps=50",
            "consistency=crash",
            'tags=["db"]',
            "--json",
            ...api,
          ],
          dir,
        );
        assert.equal(set.code, 0, set.stderr);
        assert.deepEqual((JSON.parse(set.stdout) as View).overrides, {
          bandwidthMbps: 50,
          consistency: "crash",
          tags: ["db"],
        });
        const cleared = await lifeboat(
          [
            "settings",
            "set",
            "--server",
            "srv_1",
            "--kind",
            "replication",
            "consistency=null",
            "--json",
            ...api,
          ],
          dir,
        );
        assert.equal(cleared.code, 0, cleared.stderr);
        const got = await lifeboat(["settings", "get", "--server", "srv_1", ...api], dir);
        assert.equal(got.code, 0, got.stderr);
        assert.match(got.stdout, /^bandwidthMbps\t50\t\(server\)$/m);
        assert.match(got.stdout, /^consistency\t"filesystem"\t\(builtin\)$/m);
        const bad = await lifeboat(
          ["settings", "set", "--kind", "replication", "retention=5m:1m", "--json", ...api],
          dir,
        );
        assert.equal(bad.code, 1);
        assert.equal((JSON.parse(bad.stderr) as { code: string }).code, "REQUEST_INVALID");
      } finally {
        await server.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  void it("the routes are in the OpenAPI document", async () => {
    const t = await testApp(await open());
    const doc = (await t.app.inject({ url: "/api/v1/openapi.json" })).json<{
      paths: Record<string, Record<string, { requestBody?: unknown }>>;
    }>();
    for (const kind of ["replication", "launch"]) {
      assert.ok(doc.paths[`/api/v1/settings/${kind}`]?.put?.requestBody);
      assert.ok(doc.paths[`/api/v1/servers/{id}/settings/${kind}`]?.put?.requestBody);
      assert.ok(doc.paths[`/api/v1/servers/{id}/settings/${kind}`]?.get);
    }
    await t.app.close();
  });
});

void it("cli: KEY=VALUE parses JSON values, else strings", () => {
  assert.deepEqual(
    parseAssignments(["bandwidthMbps=100", "consistency=crash", 'tags=["a"]', "outputDir=null"]),
    {
      bandwidthMbps: 100,
      consistency: "crash",
      tags: ["a"],
      outputDir: null,
    },
  );
  assert.throws(() => parseAssignments(["nokey"]), /KEY=VALUE/);
});
