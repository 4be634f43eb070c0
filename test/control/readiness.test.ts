/**
 * Readiness before disaster, control-plane side: heartbeats keep the stored
 * boot inventory when they carry none, and the server views show the verdict
 * for the server's effective boot profile.
 */
import assert from "node:assert/strict";
import { it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import type { Database } from "../../src/control/db/index.js";
import { recordHeartbeat } from "../../src/control/heartbeats.js";
import { readinessOf } from "../../src/control/readiness.js";
import { forEachDatabase } from "../support/databases.js";
import { T0, testApp } from "./helpers.js";

const remedy =
  "install the drivers and regenerate it with update-initramfs -u -k 6.1.0, or launch with profile kvm";
const BOOT = {
  version: 1,
  checkedAt: "2026-11-29T10:00:00.000Z",
  os: { id: "debian", idLike: [], name: "Debian GNU/Linux" },
  kernels: [],
  profiles: {
    kvm: { ready: true, verdict: "ready to boot on profile kvm (kernel 6.1.0)", problems: [] },
    xen: {
      ready: false,
      verdict: "not ready for profile xen: 1 problem",
      problems: [
        {
          code: "LAUNCH_DRIVERS_MISSING",
          severity: "error",
          message: "the initramfs of kernel 6.1.0 lacks xen-blkfront and xen-netfront",
          remedy,
        },
      ],
    },
  },
};

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
      last_seen_at: T0,
      inventory_json: null,
      replicator_id: null,
      token_id: null,
      registered_at: T0,
      decommissioned_at: null,
    })
    .execute();
}

const inventoryOf = async (database: Database, id: string): Promise<unknown> =>
  JSON.parse(
    (
      await database.db
        .selectFrom("servers")
        .select("inventory_json")
        .where("id", "=", id)
        .executeTakeFirstOrThrow()
    ).inventory_json!,
  );

interface ServerView {
  id: string;
  readiness: {
    profile: string;
    ready: boolean;
    verdict: string;
    problems: { code: string; remedy: string }[];
  } | null;
}

forEachDatabase("readiness", (open) => {
  void it("a heartbeat without inventory.boot keeps the stored one; with it, replaces it", async () => {
    const database = await open();
    const t = new ManualClock(T0);
    await addServer(database, "srv_1", "web-01");
    const disks = [{ index: 0, path: "/dev/vda" }];
    await recordHeartbeat(database, t, "srv_1", {
      state: "CONTINUOUS",
      inventory: { disks, tracker: "scan" },
    });
    assert.deepEqual(await inventoryOf(database, "srv_1"), { disks, tracker: "scan" });
    await recordHeartbeat(database, t, "srv_1", { state: "CONTINUOUS", inventory: { disks, boot: BOOT } });
    // Same state (one UPDATE) and a change of state (the transaction): both keep it.
    await recordHeartbeat(database, t, "srv_1", {
      state: "CONTINUOUS",
      inventory: { disks, tracker: "trace" },
    });
    assert.deepEqual(await inventoryOf(database, "srv_1"), { disks, tracker: "trace", boot: BOOT });
    await recordHeartbeat(database, t, "srv_1", { state: "BACKLOG", inventory: { disks: [] } });
    assert.deepEqual(await inventoryOf(database, "srv_1"), { disks: [], boot: BOOT });
    const newer = { ...BOOT, checkedAt: "2026-11-29T11:00:00.000Z" };
    await recordHeartbeat(database, t, "srv_1", { state: "BACKLOG", inventory: { boot: newer } });
    assert.deepEqual(await inventoryOf(database, "srv_1"), { boot: newer });
    await database.close();
  });

  void it("servers show the readiness of their boot profile; an unknown profile is refused", async () => {
    const t = await testApp(await open());
    await addServer(t.database, "srv_1", "web-01");
    await addServer(t.database, "srv_2", "web-02");
    await recordHeartbeat(t.database, t.clock, "srv_1", { state: "CONTINUOUS", inventory: { boot: BOOT } });
    const show = async (key: string) => {
      const r = await t.app.inject({ url: `/api/v1/servers/${key}`, headers: t.auth("viewer") });
      assert.equal(r.statusCode, 200, r.body);
      return r.json<ServerView>();
    };
    // The built-in profile is kvm.
    assert.deepEqual((await show("web-01")).readiness, {
      profile: "kvm",
      ready: true,
      verdict: "ready to boot on profile kvm (kernel 6.1.0)",
      problems: [],
      checkedAt: BOOT.checkedAt,
      source: "agent",
    });
    assert.equal((await show("srv_2")).readiness, null, "no boot inventory yet");

    const put = (url: string, payload: unknown) =>
      t.app.inject({
        method: "PUT",
        url,
        headers: t.auth("admin"),
        payload: payload as Record<string, unknown>,
      });
    const bad = await put("/api/v1/servers/srv_1/settings/launch", { bootProfile: "generic" });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json<{ code: string }>().code, "REQUEST_INVALID");
    assert.match(
      bad.json<{ message: string }>().message,
      /unknown boot profile "generic"; the profiles are kvm, xen, nitro, vmware, hyperv/,
    );

    assert.equal(
      (await put("/api/v1/servers/srv_1/settings/launch", { bootProfile: "xen" })).statusCode,
      200,
    );
    const xen = (await show("srv_1")).readiness!;
    assert.equal(xen.profile, "xen");
    assert.equal(xen.ready, false);
    assert.equal(xen.verdict, "not ready for profile xen: 1 problem");
    assert.equal(xen.problems[0]!.code, "LAUNCH_DRIVERS_MISSING");
    assert.equal(xen.problems[0]!.remedy, remedy);

    // The template applies to servers without their own; the list shows each server's.
    assert.equal((await put("/api/v1/settings/launch", { bootProfile: "nitro" })).statusCode, 200);
    await recordHeartbeat(t.database, t.clock, "srv_2", { state: "CONTINUOUS", inventory: { boot: BOOT } });
    const list = await t.app.inject({ url: "/api/v1/servers", headers: t.auth("viewer") });
    const servers = list.json<{ servers: ServerView[] }>().servers;
    assert.deepEqual(
      servers.map((s) => [s.id, s.readiness?.profile, s.readiness?.ready]),
      [
        ["srv_1", "xen", false],
        ["srv_2", "nitro", false],
      ],
    );
    assert.equal(
      servers[1]!.readiness!.problems[0]!.code,
      "LAUNCH_READINESS_UNKNOWN",
      "the agent did not check nitro",
    );

    // An override stored before profiles were checked still loads: the field is ignored.
    await t.database.db
      .updateTable("settings")
      .set({ json: JSON.stringify({ bootProfile: "generic", target: "qemu" }) })
      .where("scope", "=", "srv_1")
      .where("kind", "=", "launch")
      .execute();
    assert.equal((await show("srv_1")).readiness?.profile, "nitro");
    const settings = await t.app.inject({
      url: "/api/v1/servers/srv_1/settings/launch",
      headers: t.auth("viewer"),
    });
    assert.equal(settings.statusCode, 200);
    assert.equal(settings.json<{ settings: { bootProfile: string } }>().settings.bootProfile, "nitro");
    await t.app.close();
  });
});

void it("readinessOf: null without a boot inventory or with a damaged one", () => {
  assert.equal(readinessOf(null, "kvm"), null);
  assert.equal(readinessOf({ disks: [] }, "kvm"), null);
  assert.equal(readinessOf({ boot: { checkedAt: 5 } }, "kvm"), null);
  // A name of Object.prototype is not a profile the agent reported.
  assert.equal(readinessOf({ boot: BOOT }, "toString")?.problems[0]?.code, "LAUNCH_READINESS_UNKNOWN");
});
