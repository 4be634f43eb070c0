import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { initServer } from "../../src/control/init.js";
import { startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { forEachDatabase, connectionUrl } from "../support/databases.js";
import { captureLogger } from "./helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-tls-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

forEachDatabase("control plane over mutual TLS", (open, dialect) => {
  void it("an agent registers, heartbeats with its certificate, is refused without one and after revocation", async () => {
    const database = await open();
    const dataDir = path.join(tmp, `${dialect}-flow`);
    // The server uses the test's database (a file for SQLite), so the test can revoke in it.
    const init = await initServer({ dataDir, databaseUrl: await connectionUrl(database) });
    const { logger, logs } = captureLogger();
    const server = await startServer(dataDir, { listen: "127.0.0.1:0", logger, handleSignals: false });
    const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
    const operator = createApiDispatcher({ caPem });
    const agents: ReturnType<typeof createApiDispatcher>[] = [];
    try {
      const auth = { authorization: `Bearer ${init.adminApiKey}` };
      const token = await fetchJson<{ token: string }>(operator, `${server.url}/api/v1/tokens`, {
        method: "POST",
        headers: auth,
        body: { role: "agent", uses: 2 },
      });
      const register = async (hostname: string) => {
        const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: hostname });
        const anon = createApiDispatcher({ caPem });
        agents.push(anon);
        const r = await fetchJson<{ serverId: string; certificatePem: string; caPem: string }>(
          anon,
          `${server.url}/api/v1/register`,
          {
            body: { token: token.token, csr: csrPem, hostname },
          },
        );
        assert.equal(r.caPem, caPem);
        const d = createApiDispatcher({
          caPem: r.caPem,
          clientCertPem: r.certificatePem,
          clientKeyPem: keyPem,
        });
        agents.push(d);
        return { ...r, dispatcher: d };
      };
      const a = await register("app-1");
      const b = await register("app-2");

      const hb = await fetchJson<{ serverId: string }>(a.dispatcher, `${server.url}/api/v1/agent/heartbeat`, {
        body: { state: "CONTINUOUS", lagSeconds: 3, backlogBytes: 4096, inventory: { disks: ["sda"] } },
      });
      assert.equal(hb.serverId, a.serverId);
      const own = await fetchJson<{ id: string; state: string; lagSeconds: number; backlogBytes: number }>(
        a.dispatcher,
        `${server.url}/api/v1/servers/${a.serverId}`,
      );
      assert.deepEqual(
        [own.id, own.state, own.lagSeconds, own.backlogBytes],
        [a.serverId, "CONTINUOUS", 3, 4096],
      );
      // an agent cannot see another server: 404, as if it did not exist
      await assert.rejects(fetchJson(a.dispatcher, `${server.url}/api/v1/servers/${b.serverId}`), {
        code: "SERVER_NOT_FOUND",
      });
      const listed = await fetchJson<{ servers: { id: string }[] }>(
        a.dispatcher,
        `${server.url}/api/v1/servers`,
      );
      assert.deepEqual(
        listed.servers.map((s) => s.id),
        [a.serverId],
      );
      // operators see both
      const all = await fetchJson<{ servers: { id: string }[] }>(operator, `${server.url}/api/v1/servers`, {
        headers: auth,
      });
      assert.equal(all.servers.length, 2);
      // an agent certificate is no API key
      await assert.rejects(fetchJson(a.dispatcher, `${server.url}/api/v1/tokens`), { code: "AUTH_REQUIRED" });

      // without a client certificate
      await assert.rejects(
        fetchJson(operator, `${server.url}/api/v1/agent/heartbeat`, { body: { state: "CONTINUOUS" } }),
        {
          code: "NET_CLIENT_CERT_REQUIRED",
        },
      );

      // revoked: 403 on the next request, even on the same connection
      await database.db
        .updateTable("certificates")
        .set({ revoked_at: Date.now() })
        .where("subject_id", "=", a.serverId)
        .execute();
      await assert.rejects(
        fetchJson(a.dispatcher, `${server.url}/api/v1/agent/heartbeat`, { body: { state: "CONTINUOUS" } }),
        {
          code: "NET_CLIENT_CERT_REVOKED",
        },
      );
      await fetchJson(b.dispatcher, `${server.url}/api/v1/agent/heartbeat`, {
        body: { state: "INITIAL_SYNC" },
      });

      // no secret in the logs of the whole flow
      const text = logs.text();
      assert.ok(logs.lines.length > 0);
      assert.ok(!text.includes(init.adminApiKey.split(".")[1]!), "API key secret logged");
      assert.ok(!text.includes(token.token.split(".")[1]!), "token secret logged");
      assert.ok(!text.includes("PRIVATE KEY"));
    } finally {
      await operator.close();
      for (const d of agents) await d.close();
      await server.close();
    }
  });
});

void it("refuses to start while a key file is readable by others, naming it", async () => {
  const dataDir = path.join(tmp, "modes");
  await initServer({ dataDir });
  await chmod(path.join(dataDir, "keys", "ca.key"), 0o644);
  await assert.rejects(
    startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false }),
    (err: Error & { code: string }) => {
      assert.equal(err.code, "FILE_MODE_INSECURE");
      assert.match(err.message, /ca\.key/);
      return true;
    },
  );
  await chmod(path.join(dataDir, "keys", "ca.key"), 0o600);
  await chmod(path.join(dataDir, "admin-api.key"), 0o640);
  await assert.rejects(
    startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false }),
    /admin-api\.key/,
  );
});
