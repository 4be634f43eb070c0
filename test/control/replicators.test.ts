import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { systemClock } from "../../src/base/index.js";
import { clientIdentity, createRevocationList, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { forEachDatabase } from "../support/databases.js";
import { runLifeboat } from "../support/cli.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-replicators-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface ServerView {
  id: string;
  replicatorId: string | null;
}
interface ReplicatorView {
  id: string;
  name: string;
  address: string;
  online: boolean;
  state: string;
  assignedServers: string[];
}

forEachDatabase("replicators", (open, dialect) => {
  void it("register with a replicator token, heartbeat, and read only the servers assigned to them", async () => {
    const database = await open();
    const t = await startTlsServer(database, path.join(tmp, `${dialect}-assign`));
    try {
      const repToken = await t.token("replicator");
      const agentToken = await t.token("agent", 3);
      // the wrong kind of token either way
      await assert.rejects(t.registerReplicator(agentToken, "rep-x"), { code: "TOKEN_INVALID" });
      await assert.rejects(t.registerAgent(repToken, "web-x"), { code: "TOKEN_INVALID" });
      const rep = await t.registerReplicator(repToken, "rep-1", "10.1.0.5:443");
      assert.match(rep.id, /^rep_/);
      await assert.rejects(t.registerReplicator(repToken, "rep-2"), { code: "TOKEN_USED" });
      const other = await t.registerReplicator(await t.token("replicator"), "rep-2");
      await assert.rejects(t.registerReplicator(await t.token("replicator"), "rep-1"), {
        code: "REPLICATOR_NAME_TAKEN",
      });
      const a = await t.registerAgent(agentToken, "app-1");
      const b = await t.registerAgent(agentToken, "app-2");
      const c = await t.registerAgent(agentToken, "app-3");

      const hb = () =>
        fetchJson<{ replicatorId: string; servers: string[] }>(
          rep.dispatcher,
          `${t.url}/api/v1/replicator/heartbeat`,
          {
            body: { state: "ACTIVE", capacity: { bytes: 2e12 } },
          },
        );
      assert.deepEqual((await hb()).servers, [], "nothing assigned yet");
      // a: assigned by its own override; then the template assigns every server without one
      await t.adminCall(`/api/v1/servers/${a.id}/settings/replication`, {
        method: "PUT",
        body: { replicatorId: rep.id },
      });
      // by name, stored as the id; an unknown replicator is refused
      const put = await t.adminCall<{ overrides: { replicatorId: string } }>(
        `/api/v1/servers/${c.id}/settings/replication`,
        { method: "PUT", body: { replicatorId: "rep-2" } },
      );
      assert.equal(put.overrides.replicatorId, other.id);
      await assert.rejects(
        t.adminCall(`/api/v1/servers/${b.id}/settings/replication`, {
          method: "PUT",
          body: { replicatorId: "rep-nope" },
        }),
        { code: "REQUEST_INVALID", message: /replicatorId/ },
      );
      assert.deepEqual((await hb()).servers, [a.id]);
      const list = () =>
        fetchJson<{ servers: ServerView[] }>(rep.dispatcher, `${t.url}/api/v1/servers`).then((r) =>
          r.servers.map((s) => s.id).sort(),
        );
      assert.deepEqual(await list(), [a.id]);
      const one = await fetchJson<ServerView>(rep.dispatcher, `${t.url}/api/v1/servers/${a.id}`);
      assert.equal(one.replicatorId, rep.id);
      // cross-access: an unassigned server is as good as absent, by id or by name
      for (const key of [b.id, "app-2", c.id])
        await assert.rejects(fetchJson(rep.dispatcher, `${t.url}/api/v1/servers/${key}`), {
          code: "SERVER_NOT_FOUND",
        });
      await t.adminCall("/api/v1/settings/replication", { method: "PUT", body: { replicatorId: rep.id } });
      assert.deepEqual((await hb()).servers, [a.id, b.id].sort());
      assert.deepEqual(await list(), [a.id, b.id].sort());
      // A fenced server (failed over) is served by no separate replicator: its stream there is released.
      const assignments = () =>
        fetchJson<{ servers: { id: string }[] }>(
          rep.dispatcher,
          `${t.url}/api/v1/replicator/assignments`,
        ).then((r) => r.servers.map((s) => s.id).sort());
      assert.deepEqual(await assignments(), [a.id, b.id].sort());
      await database.db
        .updateTable("servers")
        .set({ fenced: "failed-over" })
        .where("id", "=", b.id)
        .execute();
      assert.deepEqual(await assignments(), [a.id]);
      await database.db.updateTable("servers").set({ fenced: null }).where("id", "=", b.id).execute();
      await assert.rejects(fetchJson(rep.dispatcher, `${t.url}/api/v1/servers/${c.id}`), {
        code: "SERVER_NOT_FOUND",
      });
      assert.deepEqual(
        (
          await fetchJson<{ servers: string[] }>(other.dispatcher, `${t.url}/api/v1/replicator/heartbeat`, {
            body: {},
          })
        ).servers,
        [c.id],
      );

      // each identity stays on its own routes
      await assert.rejects(
        fetchJson(a.dispatcher, `${t.url}/api/v1/replicator/heartbeat`, { body: { state: "ACTIVE" } }),
        { code: "AUTH_FORBIDDEN" },
      );
      await assert.rejects(
        fetchJson(rep.dispatcher, `${t.url}/api/v1/agent/heartbeat`, { body: { state: "CONTINUOUS" } }),
        { code: "AUTH_FORBIDDEN" },
      );
      await assert.rejects(fetchJson(t.operator, `${t.url}/api/v1/replicator/heartbeat`, { body: {} }), {
        code: "NET_CLIENT_CERT_REQUIRED",
      });
      for (const p of ["/api/v1/replicators", `/api/v1/replicators/${rep.id}`, "/api/v1/tokens"])
        await assert.rejects(fetchJson(rep.dispatcher, `${t.url}${p}`), { code: "AUTH_REQUIRED" }, p);
      await assert.rejects(fetchJson(a.dispatcher, `${t.url}/api/v1/replicators`), { code: "AUTH_REQUIRED" });
      // an agent still sees only itself
      assert.deepEqual(
        (await fetchJson<{ servers: ServerView[] }>(a.dispatcher, `${t.url}/api/v1/servers`)).servers.map(
          (s) => s.id,
        ),
        [a.id],
      );

      // operators: list and show, by id or name
      const listed = await t.adminCall<{ replicators: ReplicatorView[] }>("/api/v1/replicators");
      assert.deepEqual(
        listed.replicators.map((r) => [r.name, r.address, r.state, r.online, r.assignedServers]),
        [
          ["rep-1", "10.1.0.5:443", "ACTIVE", true, [a.id, b.id].sort()],
          ["rep-2", "10.0.0.9:443", "ACTIVE", true, [c.id]],
        ],
      );
      assert.equal((await t.adminCall<ReplicatorView>("/api/v1/replicators/rep-2")).id, other.id);
      await assert.rejects(t.adminCall("/api/v1/replicators/nope"), { code: "REPLICATOR_NOT_FOUND" });

      // the CLI
      const keyFile = path.join(t.dataDir, "admin-api.key");
      const cli = await runLifeboat(
        [
          "replicators",
          "list",
          "--json",
          "--endpoint",
          t.url,
          "--ca-file",
          path.join(t.dataDir, "ca.pem"),
          "--api-key-file",
          keyFile,
        ],
        tmp,
      );
      assert.equal(cli.code, 0, cli.stderr);
      const out = JSON.parse(cli.stdout) as { replicators: ReplicatorView[] };
      assert.deepEqual(
        out.replicators.map((r) => r.name),
        ["rep-1", "rep-2"],
      );
      const count0 = (rows: unknown[]) => rows.length;
      const text = await runLifeboat(
        [
          "replicators",
          "list",
          "--endpoint",
          t.url,
          "--ca-file",
          path.join(t.dataDir, "ca.pem"),
          "--api-key-file",
          keyFile,
        ],
        tmp,
      );
      assert.match(text.stdout, /rep-1\t10\.1\.0\.5:443\tACTIVE\tonline\t2 server\(s\)\tin pool/);
      const client = [
        "--endpoint",
        t.url,
        "--ca-file",
        path.join(t.dataDir, "ca.pem"),
        "--api-key-file",
        keyFile,
      ];
      const drain = await runLifeboat(["replicators", "drain", "rep-1", ...client, "--json"], tmp);
      assert.equal(drain.code, 0, drain.stderr);
      assert.equal((JSON.parse(drain.stdout) as { drained: boolean }).drained, true);
      const row = await database.db
        .selectFrom("replicators")
        .select("drained")
        .where("name", "=", "rep-1")
        .executeTakeFirstOrThrow();
      assert.equal(row.drained, 1);
      const undrain = await runLifeboat(["replicators", "undrain", "rep-1", ...client], tmp);
      assert.match(undrain.stdout, /rep-1 takes servers from the pool again/);
      assert.equal(
        count0(
          await database.db
            .selectFrom("audit_log")
            .select("action")
            .where("action", "=", "replicator.drain")
            .execute(),
        ),
        1,
      );

      // accepted heartbeats leave no audit record; registrations do
      const audit = await database.db.selectFrom("audit_log").select(["action", "result"]).execute();
      const count = (action: string, result: string) =>
        audit.filter((x) => x.action === action && x.result === result).length;
      assert.equal(count("replicator.register", "ok"), 2);
      assert.equal(count("replicator.register", "denied"), 2);
      assert.equal(count("replicator.register", "failed"), 1, "name taken");
      assert.equal(count("replicator.heartbeat", "ok"), 0);
      assert.equal(count("replicator.heartbeat", "denied"), 2, "the agent's and the anonymous attempt");
      assert.ok(!t.logs.text().includes(repToken.split(".")[1]!), "token secret logged");
    } finally {
      await t.close();
    }
  });

  void it("renewal with the current certificate; decommission revokes, refused on the next request; revocation list", async () => {
    const database = await open();
    const t = await startTlsServer(database, path.join(tmp, `${dialect}-revoke`));
    try {
      const agentToken = await t.token("agent", 2);
      const a = await t.registerAgent(agentToken, "db-1");
      const b = await t.registerAgent(agentToken, "db-2");
      const rep = await t.registerReplicator(await t.token("replicator"), "rep-1");
      const beat = (d: typeof a.dispatcher) =>
        fetchJson<{ serverId: string }>(d, `${t.url}/api/v1/agent/heartbeat`, {
          body: { state: "CONTINUOUS" },
        });

      // renew: a new key, same identity; the old certificate keeps working until it expires
      const fresh = await generateKeyAndCsr({ commonName: "db-1" });
      const renewed = await fetchJson<{ certificatePem: string; serial: string; notAfter: string }>(
        a.dispatcher,
        `${t.url}/api/v1/renew`,
        { body: { csr: fresh.csrPem } },
      );
      const id = clientIdentity(renewed.certificatePem)!;
      assert.deepEqual([id.role, id.subjectId, id.serial], ["agent", a.id, renewed.serial]);
      assert.notEqual(renewed.serial, clientIdentity(a.certificatePem)!.serial);
      const a2 = t.as(fresh.keyPem, renewed.certificatePem);
      assert.equal((await beat(a2)).serverId, a.id);
      assert.equal((await beat(a.dispatcher)).serverId, a.id);
      // a replicator renews too; no certificate, no renewal
      const repFresh = await generateKeyAndCsr({ commonName: "rep-1" });
      const repRenewed = await fetchJson<{ certificatePem: string }>(
        rep.dispatcher,
        `${t.url}/api/v1/renew`,
        {
          body: { csr: repFresh.csrPem },
        },
      );
      assert.equal(clientIdentity(repRenewed.certificatePem)!.role, "replicator");
      await assert.rejects(fetchJson(t.operator, `${t.url}/api/v1/renew`, { body: { csr: fresh.csrPem } }), {
        code: "NET_CLIENT_CERT_REQUIRED",
      });
      await assert.rejects(fetchJson(a.dispatcher, `${t.url}/api/v1/renew`, { body: { csr: "nope" } }), {
        code: "NET_CSR_INVALID",
      });

      // decommission: admins only
      const viewerKey = path.join(t.dataDir, "admin-api.key");
      await assert.rejects(
        fetchJson(t.operator, `${t.url}/api/v1/servers/${a.id}/decommission`, { body: {} }),
        { code: "AUTH_REQUIRED" },
      );
      await assert.rejects(
        fetchJson(a.dispatcher, `${t.url}/api/v1/servers/${a.id}/decommission`, { body: {} }),
        { code: "AUTH_REQUIRED" },
      );
      const ca = [
        "--endpoint",
        t.url,
        "--ca-file",
        path.join(t.dataDir, "ca.pem"),
        "--api-key-file",
        viewerKey,
      ];
      const dry = await runLifeboat(["servers", "decommission", "db-1", "--json", ...ca], tmp);
      assert.equal(dry.code, 2);
      assert.equal((JSON.parse(dry.stderr) as { code: string }).code, "CONFIRMATION_REQUIRED");
      assert.equal((await beat(a.dispatcher)).serverId, a.id, "nothing happened without --yes");
      const done = await runLifeboat(["servers", "decommission", "db-1", "--yes", "--json", ...ca], tmp);
      assert.equal(done.code, 0, done.stderr);
      assert.deepEqual(JSON.parse(done.stdout), { id: a.id, name: "db-1", revokedCertificates: 2 });

      // both of its certificates are refused from the next request on, on connections already open
      for (const d of [a.dispatcher, a2]) {
        await assert.rejects(beat(d), { code: "NET_CLIENT_CERT_REVOKED" });
        await assert.rejects(fetchJson(d, `${t.url}/api/v1/servers/${a.id}`), {
          code: "NET_CLIENT_CERT_REVOKED",
        });
        await assert.rejects(fetchJson(d, `${t.url}/api/v1/renew`, { body: { csr: fresh.csrPem } }), {
          code: "NET_CLIENT_CERT_REVOKED",
        });
      }
      assert.equal((await beat(b.dispatcher)).serverId, b.id, "the other agent is untouched");
      await assert.rejects(
        t.adminCall(`/api/v1/servers/${a.id}/decommission`, { method: "POST", body: {} }),
        {
          code: "SERVER_NOT_FOUND",
        },
      );
      assert.deepEqual(
        (await t.adminCall<{ servers: { id: string }[] }>("/api/v1/servers")).servers.map((s) => s.id),
        [b.id],
      );

      // replicators learn revocations from the control plane
      const list = createRevocationList({ dispatcher: rep.dispatcher, endpoint: t.url, clock: systemClock });
      assert.equal(await list.isRevoked(clientIdentity(a.certificatePem)!.serial), true);
      assert.equal(await list.isRevoked(renewed.serial), true);
      assert.equal(await list.isRevoked(clientIdentity(b.certificatePem)!.serial), false);
      await assert.rejects(fetchJson(b.dispatcher, `${t.url}/api/v1/revocations`), {
        code: "AUTH_FORBIDDEN",
      });

      // a decommissioned replicator is refused too
      const r = await t.adminCall<{ revokedCertificates: number }>(
        `/api/v1/replicators/${rep.id}/decommission`,
        {
          method: "POST",
          body: {},
        },
      );
      assert.equal(r.revokedCertificates, 2);
      await assert.rejects(fetchJson(rep.dispatcher, `${t.url}/api/v1/replicator/heartbeat`, { body: {} }), {
        code: "NET_CLIENT_CERT_REVOKED",
      });
      await assert.rejects(list.refresh(), { code: "NET_CLIENT_CERT_REVOKED" });

      const events = await database.db
        .selectFrom("events")
        .select(["type", "server_id"])
        .orderBy("seq")
        .execute();
      assert.deepEqual(
        events.filter((e) => e.type.endsWith(".decommissioned")).map((e) => e.type),
        ["server.decommissioned", "replicator.decommissioned"],
      );
      const audit = await database.db.selectFrom("audit_log").select(["action", "result"]).execute();
      assert.ok(audit.some((x) => x.action === "server.decommission" && x.result === "ok"));
      assert.ok(audit.some((x) => x.action === "server.decommission" && x.result === "denied"));
      assert.equal(audit.filter((x) => x.action === "certificate.renew" && x.result === "ok").length, 2);
    } finally {
      await t.close();
    }
  });
});
