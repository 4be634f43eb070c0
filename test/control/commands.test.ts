/**
 * Commands for agents over a real TLS server on SQLite and PostgreSQL: an
 * operator asks for a PIT, the agent's long poll gets it at once, completes
 * it with a PIT of the catalog and `lifeboat pits create` prints that PIT;
 * other agents never see it; group PITs meet at one barrier or abort;
 * undelivered work comes again after 60 s of the app's clock.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { ManualClock, isLifeboatError } from "../../src/base/index.js";
import { ControlClient } from "../../src/agent/control-client.js";
import { main } from "../../src/cli/main.js";
import { startServer } from "../../src/control/start.js";
import type { Database } from "../../src/control/db/index.js";
import { forEachDatabase } from "../support/databases.js";
import { T0 } from "./helpers.js";
import { type TlsServer, startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-commands-"));
});
after(() => rm(tmp, { recursive: true, force: true }));

/** Runs the CLI in this process and captures what it prints. */
async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const out = process.stdout.write.bind(process.stdout);
  const err = process.stderr.write.bind(process.stderr);
  process.stdout.write = (s: string | Uint8Array) => ((stdout += String(s)), true);
  process.stderr.write = (s: string | Uint8Array) => ((stderr += String(s)), true);
  try {
    process.exitCode = undefined;
    const code = await main(["node", "lifeboat", ...args]);
    return { code, stdout, stderr };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
    process.exitCode = undefined;
  }
}

let pitCounter = 0;
/** A PIT in the catalog, as the replicator (or `store reindex`) records it. */
async function catalogPit(database: Database, serverId: string, name: string): Promise<string> {
  const id = (++pitCounter).toString(16).padStart(24, "0");
  await database.db
    .insertInto("pits")
    .values({
      id,
      repository_id: "repo-1",
      server_id: serverId,
      server_name: name,
      seq: pitCounter,
      time_ms: T0 + pitCounter,
      consistency: "filesystem",
      disks_json: JSON.stringify([{ index: 0, id: "vdb", sizeBytes: 1048576 }]),
    })
    .execute();
  return id;
}

interface Agent {
  id: string;
  name: string;
  certPem: string;
  keyPem: string;
  client: ControlClient;
}

async function setup(open: () => Promise<Database>): Promise<{
  t: TlsServer;
  database: Database;
  clock: ManualClock;
  agents: Agent[];
  cli: (...args: string[]) => Promise<{ code: number; stdout: string; stderr: string }>;
  close(): Promise<void>;
}> {
  const database = await open();
  const clock = new ManualClock(T0);
  const dir = path.join(tmp, `srv-${Math.random().toString(36).slice(2)}`);
  const t = await startTlsServer(database, dir, { clock, replicator: false });
  const token = await t.token("agent", 3);
  const agents: Agent[] = [];
  for (const name of ["db-1", "app-1", "app-2"]) {
    const a = await t.registerAgent(token, name);
    const client = new ControlClient({
      endpoint: t.url,
      caPem: t.caPem,
      certPem: a.certificatePem,
      keyPem: a.keyPem,
      clock,
    });
    agents.push({ id: a.id, name, certPem: a.certificatePem, keyPem: a.keyPem, client });
  }
  const common = [
    "--endpoint",
    t.url,
    "--ca-file",
    path.join(dir, "ca.pem"),
    "--api-key-file",
    path.join(dir, "admin-api.key"),
    "--json",
  ];
  return {
    t,
    database,
    clock,
    agents,
    cli: (...args) => runCli([...args, ...common]),
    async close() {
      for (const a of agents) await a.client.close();
      await t.close();
    },
  };
}

forEachDatabase("agent commands", (open) => {
  void it("a PIT request reaches the agent's long poll at once; pits create prints the PIT; others never see it", async () => {
    const s = await setup(open);
    try {
      const [db1, app1] = s.agents as [Agent, Agent];
      // Nothing queued: the long poll answers empty after waitSeconds.
      let t0 = Date.now();
      assert.deepEqual(await db1.client.nextCommands({ waitSeconds: 1 }), []);
      assert.ok(Date.now() - t0 >= 900, "waited about a second");

      // The operator asks; the poll returns within about a second, not after 20.
      t0 = Date.now();
      const polled = db1.client.nextCommands({ waitSeconds: 20 });
      await new Promise((r) => setTimeout(r, 100));
      const req = await s.t.adminCall<{ commandId: string; jobId: string; state: string }>(
        `/api/v1/servers/db-1/pits`,
        { method: "POST", body: { consistency: "filesystem" } },
      );
      assert.equal(req.state, "queued");
      const cmds = await polled;
      assert.ok(Date.now() - t0 < 3000);
      assert.deepEqual(cmds, [
        { id: req.commandId, kind: "make-pit", params: { consistency: "filesystem" } },
      ]);

      // Another agent never sees it and cannot complete it.
      assert.deepEqual(await app1.client.nextCommands({ waitSeconds: 0 }), []);
      const pitId = await catalogPit(s.database, db1.id, "db-1");
      await assert.rejects(app1.client.complete(req.commandId, { ok: true, result: { pitId } }), (e) =>
        isLifeboatError(e, "COMMAND_NOT_FOUND"),
      );

      await db1.client.complete(req.commandId, { ok: true, result: { pitId } });
      await db1.client.complete(req.commandId, { ok: true, result: { pitId } }); // idempotent
      await assert.rejects(
        db1.client.complete(req.commandId, { ok: false, code: "X_FAILED", message: "no" }),
        (e) => isLifeboatError(e, "COMMAND_FINISHED"),
      );
      const view = await s.t.adminCall<{ state: string; result: Record<string, unknown> }>(
        `/api/v1/commands/${req.commandId}`,
      );
      assert.equal(view.state, "done");
      assert.deepEqual(view.result, {
        pitId,
        seq: pitCounter,
        takenAt: new Date(T0 + pitCounter).toISOString(),
        consistency: "filesystem",
        disks: [{ index: 0, id: "vdb", sizeBytes: 1048576 }],
      });
      const job = await s.t.adminCall<{ job: { state: string; type: string } }>(`/api/v1/jobs/${req.jobId}`);
      assert.deepEqual([job.job.type, job.job.state], ["pit", "succeeded"]);

      // pits create waits and prints the PIT; the agent answers meanwhile.
      const agentLoop = (async () => {
        const [c] = await db1.client.nextCommands({ waitSeconds: 20 });
        const id = await catalogPit(s.database, db1.id, "db-1");
        await db1.client.complete(c!.id, { ok: true, result: { pitId: id } });
        return id;
      })();
      const out = await s.cli("pits", "create", "db-1", "--timeout", "30s");
      const made = await agentLoop;
      assert.equal(out.code, 0, out.stderr);
      const pit = JSON.parse(out.stdout) as Record<string, unknown>;
      assert.equal(pit.id, made);
      for (const k of ["seq", "takenAt", "consistency", "disks"]) assert.ok(k in pit, k);

      // --no-wait prints the request.
      const nw = await s.cli("pits", "create", "db-1", "--no-wait");
      assert.equal(nw.code, 0, nw.stderr);
      const ids = JSON.parse(nw.stdout) as { commandId: string; jobId: string };
      assert.match(ids.commandId, /^cmd_/);
      assert.match(ids.jobId, /^job_/);
      const [queued] = await db1.client.nextCommands({ waitSeconds: 0 });
      assert.equal(queued?.id, ids.commandId);
      await db1.client.complete(queued.id, { ok: false, code: "AGENT_BUSY", message: "busy" });
      // The agent fails it: the code comes through to the CLI.
      const failing = (async () => {
        const cs = await db1.client.nextCommands({ waitSeconds: 20 });
        for (const c of cs)
          await db1.client.complete(c.id, {
            ok: false,
            code: "AGENT_FREEZE_FAILED",
            message: "fsfreeze: busy",
          });
      })();
      const failed = await s.cli("pits", "create", "db-1", "--timeout", "30s");
      await failing;
      assert.equal(failed.code, 1);
      assert.equal((JSON.parse(failed.stderr) as { code: string }).code, "AGENT_FREEZE_FAILED");

      // Nobody answers: PIT_TIMEOUT.
      const slow = await s.cli("pits", "create", "app-1", "--timeout", "1s");
      assert.equal(slow.code, 1);
      const e = JSON.parse(slow.stderr) as { code: string; hint: string };
      assert.equal(e.code, "PIT_TIMEOUT");
      assert.match(e.hint, /servers show/);

      // Redelivery: delivered and not completed, it comes again after 60 s of the app's clock.
      const [first] = await app1.client.nextCommands({ waitSeconds: 0 });
      assert.ok(first);
      assert.deepEqual(await app1.client.nextCommands({ waitSeconds: 0 }), []);
      s.clock.advance(61_000);
      assert.deepEqual(
        (await app1.client.nextCommands({ waitSeconds: 0 })).map((c) => c.id),
        [first.id],
      );
      // Past its deadline it expires.
      s.clock.advance(11 * 60_000);
      const expired = await s.t.adminCall<{ state: string; error: { code: string } }>(
        `/api/v1/commands/${first.id}`,
      );
      assert.deepEqual([expired.state, expired.error.code], ["expired", "COMMAND_EXPIRED"]);

      // The certificate is renewed once less than a third of its validity is left, keeping the key.
      assert.equal(await db1.client.renewIfDue(), null);
      const cert = new X509Certificate(s.agents[0]!.certPem);
      const notAfter = Date.parse(cert.validTo);
      s.clock.set(notAfter - (notAfter - Date.parse(cert.validFrom)) / 4);
      const renewed = await db1.client.renewIfDue();
      assert.ok(renewed !== null && renewed !== s.agents[0]!.certPem);
      await db1.client.heartbeat({ state: "CONTINUOUS" }); // with the new certificate

      // Decommissioned servers take no commands.
      await s.t.adminCall(`/api/v1/servers/app-2/decommission`, { method: "POST", body: {} });
      await assert.rejects(s.t.adminCall(`/api/v1/servers/app-2/pits`, { method: "POST", body: {} }), (err) =>
        isLifeboatError(err, "SERVER_DECOMMISSIONED"),
      );
    } finally {
      await s.close();
    }
  });

  void it("a group PIT: members meet at the barrier with one takenAt, or it aborts", async () => {
    const s = await setup(open);
    try {
      const [db1, app1] = s.agents as [Agent, Agent];
      assert.equal((await s.cli("servers", "group", "db-1", "erp")).code, 0);
      assert.equal((await s.cli("servers", "group", "app-1", "erp")).code, 0);
      const shown = await s.t.adminCall<{ group: string | null }>(`/api/v1/servers/app-1`);
      assert.equal(shown.group, "erp");
      await assert.rejects(s.t.adminCall(`/api/v1/groups/nobody/pits`, { method: "POST", body: {} }), (e) =>
        isLifeboatError(e, "GROUP_EMPTY"),
      );

      // Both freeze concurrently and proceed with the same time; then the CLI prints the group's PITs.
      const member = async (a: Agent) => {
        const [c] = await a.client.nextCommands({ waitSeconds: 20 });
        assert.equal(c?.kind, "group-pit");
        const r = await a.client.frozen(c.id);
        if (r.proceed) {
          const pitId = await catalogPit(s.database, a.id, a.name);
          await a.client.complete(c.id, { ok: true, result: { pitId } });
        }
        return r;
      };
      const members = Promise.all([member(db1), member(app1)]);
      const out = await s.cli("pits", "create", "--group", "erp", "--timeout", "30s");
      const [r1, r2] = await members;
      assert.equal(out.code, 0, out.stderr);
      assert.equal(r1.proceed, true);
      assert.equal(typeof r1.takenAt, "number");
      assert.deepEqual(r1, r2);
      const g = JSON.parse(out.stdout) as { groupPitId: string; takenAt: string; pits: { id: string }[] };
      assert.equal(g.takenAt, new Date(r1.takenAt!).toISOString());
      assert.equal(g.pits.length, 2);

      // One member never reports frozen: the other is told not to proceed, the group PIT aborts.
      const req = await s.t.adminCall<{
        groupPitId: string;
        commands: { serverId: string; commandId: string }[];
      }>(`/api/v1/groups/erp/pits`, { method: "POST", body: { barrierTimeoutMs: 1000 } });
      const [c1] = await db1.client.nextCommands({ waitSeconds: 5 });
      const [c2] = await app1.client.nextCommands({ waitSeconds: 5 });
      const t0 = Date.now();
      assert.deepEqual(await db1.client.frozen(c1!.id), { proceed: false });
      const took = Date.now() - t0;
      assert.ok(took >= 900 && took < 3000, `barrier answered after ${took} ms`);
      const gp = await s.t.adminCall<{ state: string; members: { error: { code: string } | null }[] }>(
        `/api/v1/group-pits/${req.groupPitId}`,
      );
      assert.equal(gp.state, "aborted");
      assert.deepEqual(
        gp.members.map((m) => m.error?.code),
        ["GROUP_PIT_ABORTED", "GROUP_PIT_ABORTED"],
      );
      // The late member is told not to proceed either.
      assert.deepEqual(await app1.client.frozen(c2!.id), { proceed: false });

      await s.cli("servers", "group", "app-1", "--none");
      assert.equal((await s.t.adminCall<{ group: string | null }>(`/api/v1/servers/app-1`)).group, null);
    } finally {
      await s.close();
    }
  });

  void it("two control-plane processes on one database: polls and the barrier see each other's changes", async () => {
    const s = await setup(open);
    // A second instance on the same data directory and database, as behind a load balancer.
    const b = await startServer(s.t.dataDir, {
      listen: "127.0.0.1:0",
      handleSignals: false,
      replicator: false,
      clock: s.clock,
    });
    const viaB: ControlClient[] = [];
    try {
      const [db1, app1] = s.agents as [Agent, Agent];
      const certs = s.agents.slice(0, 2).map((a) => {
        const c = new ControlClient({
          endpoint: b.url,
          caPem: s.t.caPem,
          certPem: a.certPem,
          keyPem: a.keyPem,
        });
        viaB.push(c);
        return c;
      });
      // Queued through A, the poll on B gets it within its re-check interval.
      const t0 = Date.now();
      const polled = certs[0]!.nextCommands({ waitSeconds: 20 });
      await new Promise((r) => setTimeout(r, 100));
      const req = await s.t.adminCall<{ commandId: string }>("/api/v1/servers/db-1/pits", {
        method: "POST",
        body: {},
      });
      assert.deepEqual(
        (await polled).map((c) => c.id),
        [req.commandId],
      );
      assert.ok(Date.now() - t0 < 4000, `took ${Date.now() - t0} ms`);
      await db1.client.complete(req.commandId, { ok: false, code: "AGENT_BUSY", message: "busy" });

      // Group members at the barrier on different instances proceed together.
      for (const name of ["db-1", "app-1"]) await s.cli("servers", "group", name, "erp");
      const g = await s.t.adminCall<{
        groupPitId: string;
        commands: { serverId: string; commandId: string }[];
      }>("/api/v1/groups/erp/pits", { method: "POST", body: { barrierTimeoutMs: 5000 } });
      const idOf = (serverId: string) => g.commands.find((c) => c.serverId === serverId)!.commandId;
      const [r1, r2] = await Promise.all([db1.client.frozen(idOf(db1.id)), certs[1]!.frozen(idOf(app1.id))]);
      assert.equal(r1.proceed, true);
      assert.deepEqual(r1, r2);
    } finally {
      for (const c of viaB) await c.close();
      await b.close();
      await s.close();
    }
  });
});
