/**
 * The agent's ControlClient against a real control plane over mutual TLS:
 * heartbeats, a long poll that an AbortSignal or the server's shutdown ends
 * at once, and how completions are recorded (catalog lag, a PIT less
 * consistent than asked for, a group member that did not wait for the
 * barrier).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { ControlClient } from "../../src/agent/control-client.js";
import { isLifeboatError } from "../../src/base/index.js";
import type { Database } from "../../src/control/db/index.js";
import { fetchJson } from "../../src/net/index.js";
import { forEachDatabase } from "../support/databases.js";
import { T0 } from "../control/helpers.js";
import { startTlsServer } from "../control/tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-control-client-"));
});
after(() => rm(tmp, { recursive: true, force: true }));

async function catalogPit(
  database: Database,
  serverId: string,
  id: string,
  consistency: "filesystem" | "crash",
) {
  await database.db
    .insertInto("pits")
    .values({
      id,
      repository_id: "repo-1",
      server_id: serverId,
      server_name: "db-1",
      seq: 1,
      time_ms: T0,
      consistency,
      disks_json: "[]",
    })
    .execute();
}

forEachDatabase("ControlClient", (open) => {
  void it("heartbeats, long polls that abort and end with the server, completions as recorded", async () => {
    const database = await open();
    const t = await startTlsServer(database, path.join(tmp, `srv-${Math.random().toString(36).slice(2)}`), {
      replicator: false,
    });
    const a = await t.registerAgent(await t.token("agent"), "db-1");
    const client = new ControlClient({
      endpoint: `${t.url}/`,
      caPem: t.caPem,
      certPem: a.certificatePem,
      keyPem: a.keyPem,
    });
    let closed = false;
    try {
      const hb = await client.heartbeat({ state: "CONTINUOUS", lagSeconds: 2, backlogBytes: 0 });
      assert.ok(hb.heartbeatSeconds >= 1);

      // An AbortSignal ends a long poll at once.
      const ac = new AbortController();
      const t0 = Date.now();
      const polled = client.nextCommands({ waitSeconds: 30, signal: ac.signal });
      setTimeout(() => ac.abort(), 100);
      await assert.rejects(polled);
      assert.ok(Date.now() - t0 < 2000);

      // The catalog lags: what the agent reported is kept, marked as not cataloged.
      const ask = (body: object = {}) =>
        t.adminCall<{ commandId: string }>("/api/v1/servers/db-1/pits", { method: "POST", body });
      const lag = await ask();
      const [c1] = await client.nextCommands({ waitSeconds: 5 });
      assert.equal(c1?.id, lag.commandId);
      await client.complete(c1.id, {
        ok: true,
        result: { pitId: "f".repeat(24), seq: 7, takenAt: T0, consistency: "crash", disks: [] },
      });
      const v1 = await t.adminCall<{ state: string; result: Record<string, unknown> }>(
        `/api/v1/commands/${c1.id}`,
      );
      assert.equal(v1.state, "done");
      assert.deepEqual(v1.result, {
        pitId: "f".repeat(24),
        seq: 7,
        takenAt: new Date(T0).toISOString(),
        consistency: "crash",
        disks: [],
        cataloged: false,
      });
      // Once the catalog has it, the catalog's record is shown.
      await catalogPit(database, a.id, "f".repeat(24), "crash");
      const later = await t.adminCall<{ result: Record<string, unknown> }>(`/api/v1/commands/${c1.id}`);
      assert.deepEqual(later.result, {
        pitId: "f".repeat(24),
        seq: 1,
        takenAt: new Date(T0).toISOString(),
        consistency: "crash",
        disks: [],
      });

      // Less consistent than asked for: failed, with the PIT in the result.
      const low = await ask({ consistency: "filesystem" });
      const [c2] = await client.nextCommands({ waitSeconds: 5 });
      assert.equal(c2?.id, low.commandId);
      await catalogPit(database, a.id, "e".repeat(24), "crash");
      await client.complete(c2.id, { ok: true, result: { pitId: "e".repeat(24) } });
      const v2 = await t.adminCall<{ state: string; error: { code: string }; result: { pitId: string } }>(
        `/api/v1/commands/${c2.id}`,
      );
      assert.deepEqual(
        [v2.state, v2.error.code, v2.result.pitId],
        ["failed", "PIT_CONSISTENCY_TOO_LOW", "e".repeat(24)],
      );

      // A group member may not report its PIT before the barrier released the group.
      const patch = (group: string) =>
        fetchJson(t.operator, `${t.url}/api/v1/servers/db-1`, {
          method: "PATCH",
          headers: t.admin,
          body: { group },
        });
      await patch("solo");
      await t.adminCall("/api/v1/groups/solo/pits", { method: "POST", body: {} });
      const [c3] = await client.nextCommands({ waitSeconds: 5 });
      assert.equal(c3?.kind, "group-pit");
      await assert.rejects(client.complete(c3.id, { ok: true, result: { pitId: "e".repeat(24) } }), (e) =>
        isLifeboatError(e, "GROUP_PIT_NOT_RELEASED"),
      );
      const go = await client.frozen(c3.id); // the only member: released at once
      assert.equal(go.proceed, true);
      await client.complete(c3.id, { ok: false, code: "AGENT_READ_FAILED", message: "EIO" });
      const bad = await patch("Not_A_Group").catch((e: unknown) => e);
      assert.ok(isLifeboatError(bad, "REQUEST_INVALID"));

      // The server shuts down: a waiting long poll ends at once instead of holding the shutdown.
      const waiting = client.nextCommands({ waitSeconds: 60 }).catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200));
      const s0 = Date.now();
      await t.close();
      closed = true;
      await waiting;
      assert.ok(Date.now() - s0 < 5000, `shutdown took ${Date.now() - s0} ms`);
    } finally {
      await client.close();
      if (!closed) await t.close();
    }
  });
});
