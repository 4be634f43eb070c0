/**
 * The control plane as real processes (`lifeboat server start` children):
 * killed with SIGKILL in the middle of many registrations, and two of them on
 * one PostgreSQL database. The kill moment is drawn from a seed, printed;
 * LIFEBOAT_SEED=<seed> replays it.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, it } from "node:test";
import { verifyAudit } from "../../src/control/audit.js";
import { initServer } from "../../src/control/init.js";
import type { Database } from "../../src/control/db/index.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { connectionUrl, forEachDatabase } from "../support/databases.js";
import { prng, seedFromEnv } from "../support/images.js";

const BIN = path.resolve(import.meta.dirname, "../../../bin/lifeboat.js");

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-control-faults-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

interface Child {
  process: ChildProcess;
  url: string;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
}

/** `lifeboat server start` on a free loopback port; resolves once it listens. */
async function spawnServer(dataDir: string): Promise<Child> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("LIFEBOAT_")) env[k] = v;
  const child = spawn(
    process.execPath,
    [BIN, "server", "start", "--data-dir", dataDir, "--listen", "127.0.0.1:0"],
    { env, stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let log = "";
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${log}`)), 30_000);
    child.stderr.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /"address":"([^"]+)"[^\n]*"msg":"listening"/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(`https://${m[1]}`);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${log}`));
    });
  });
  return { process: child, url, exited };
}

/** server init on the test's database, with registration rate limiting out of the way. */
async function init(dataDir: string, database: Database): Promise<{ adminApiKey: string; caPem: string }> {
  const r = await initServer({ dataDir, databaseUrl: await connectionUrl(database) });
  const file = path.join(dataDir, "config.json");
  const config = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
  await writeFile(file, JSON.stringify({ ...config, registerRateLimitPerMinute: 100_000 }));
  return { adminApiKey: r.adminApiKey, caPem: await readFile(path.join(dataDir, "ca.pem"), "utf8") };
}

async function stop(child: Child, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill(signal);
  await child.exited;
}

/** Nothing half-registered: every server has its certificate and registration; every token use made a server. */
async function assertWhole(database: Database): Promise<void> {
  const servers = await database.db.selectFrom("servers").select(["id", "token_id"]).execute();
  const certs = await database.db.selectFrom("certificates").select(["subject_id", "serial"]).execute();
  const regs = await database.db.selectFrom("registrations").selectAll().execute();
  for (const s of servers) {
    assert.ok(
      certs.some((c) => c.subject_id === s.id),
      `server ${s.id} has a certificate`,
    );
    assert.ok(
      regs.some((r) => r.subject_id === s.id),
      `server ${s.id} has its registration`,
    );
  }
  for (const r of regs) assert.ok(certs.some((c) => c.serial === r.certificate_serial));
  const tokens = await database.db.selectFrom("install_tokens").select(["id", "uses_count"]).execute();
  for (const t of tokens)
    assert.equal(
      Number(t.uses_count),
      servers.filter((s) => s.token_id === t.id).length,
      `token ${t.id}: uses counted = servers made`,
    );
}

forEachDatabase("control plane processes under faults", (open, dialect) => {
  void it("kill -9 during many concurrent registrations leaves nothing half-registered; restart is clean", async () => {
    const seed = seedFromEnv();
    const random = prng(seed);
    const database = await open();
    const dataDir = path.join(tmp, `${dialect}-kill`);
    const { adminApiKey, caPem } = await init(dataDir, database);
    const auth = { authorization: `Bearer ${adminApiKey}` };
    const N = 40;
    const d = createApiDispatcher({ caPem });
    let server = await spawnServer(dataDir);
    try {
      const tokens: string[] = [];
      for (let i = 0; i < N; i++)
        tokens.push(
          (
            await fetchJson<{ token: string }>(d, `${server.url}/api/v1/tokens`, {
              headers: auth,
              body: { role: "agent" },
            })
          ).token,
        );
      const keys = await Promise.all(tokens.map((_, i) => generateKeyAndCsr({ commonName: `h${i}` })));
      // the kill lands while registrations are in flight: after the first answer, plus 0-400 ms
      const killAfter = Math.floor(random() * 400);
      const register = (url: string, i: number, csr = keys[i]!.csrPem) =>
        fetchJson<{ serverId: string }>(d, `${url}/api/v1/register`, {
          body: { token: tokens[i]!, csr, hostname: `host-${i}` },
        });
      const first = server.url;
      const inFlight = tokens.map((_, i) => register(first, i));
      const attempts = Promise.allSettled(inFlight);
      await Promise.any(inFlight);
      await delay(killAfter);
      server.process.kill("SIGKILL");
      await server.exited;
      const settled = await attempts;
      const answered = settled.flatMap((r, i) =>
        r.status === "fulfilled" ? [[i, r.value.serverId] as const] : [],
      );
      process.stdout.write(
        `# seed ${seed} (replay with LIFEBOAT_SEED=${seed}): killed ${killAfter} ms after the first answer, ${answered.length}/${N} registrations answered\n`,
      );

      server = await spawnServer(dataDir);
      assert.deepEqual(await fetchJson(d, `${server.url}/readyz`), { status: "ready" });
      await assertWhole(database);
      const rows = await database.db.selectFrom("registrations").select(["subject_id"]).execute();
      for (const [i, serverId] of answered)
        assert.ok(
          rows.some((r) => r.subject_id === serverId),
          `answered registration ${i} (seed ${seed}) is stored`,
        );
      // every agent can finish: a retry with the same token and key gets the server it was given, if any
      const retried = await Promise.all(tokens.map((_, i) => register(server.url, i)));
      for (const [i, serverId] of answered) assert.equal(retried[i]!.serverId, serverId, `seed ${seed}`);
      assert.equal(new Set(retried.map((r) => r.serverId)).size, N);
      // no token can be redeemed a second time with another key
      const other = await generateKeyAndCsr({ commonName: "intruder" });
      for (let i = 0; i < N; i += 7)
        await assert.rejects(register(server.url, i, other.csrPem), { code: "TOKEN_USED" }, `seed ${seed}`);
      assert.equal((await database.db.selectFrom("servers").select("id").execute()).length, N);
      await assertWhole(database);
      assert.equal((await verifyAudit(database)).ok, true, `seed ${seed}`);
    } finally {
      await d.close();
      await stop(server);
    }
  });

  if (dialect === "postgres") {
    void it("two processes on one PostgreSQL: one single-use token makes one server; heartbeats through both", async () => {
      const database = await open();
      const dataDir = path.join(tmp, "two");
      const { adminApiKey, caPem } = await init(dataDir, database);
      const auth = { authorization: `Bearer ${adminApiKey}` };
      const d = createApiDispatcher({ caPem });
      const [a, b] = await Promise.all([spawnServer(dataDir), spawnServer(dataDir)]);
      const agents: { close(): Promise<void> }[] = [];
      try {
        const { token } = await fetchJson<{ token: string }>(d, `${a.url}/api/v1/tokens`, {
          headers: auth,
          body: { role: "agent" },
        });
        const keys = await Promise.all(
          Array.from({ length: 30 }, (_, i) => generateKeyAndCsr({ commonName: `h${i}` })),
        );
        const results = await Promise.allSettled(
          keys.map((k, i) =>
            fetchJson<{ serverId: string; certificatePem: string }>(
              d,
              `${(i % 2 ? a : b).url}/api/v1/register`,
              { body: { token, csr: k.csrPem, hostname: `host-${i}` } },
            ),
          ),
        );
        const ok = results.flatMap((r, i) => (r.status === "fulfilled" ? [{ i, ...r.value }] : []));
        assert.equal(ok.length, 1);
        for (const r of results)
          if (r.status === "rejected") assert.equal((r.reason as { code: string }).code, "TOKEN_USED");
        assert.equal((await database.db.selectFrom("servers").select("id").execute()).length, 1);
        await assertWhole(database);

        const agent = createApiDispatcher({
          caPem,
          clientCertPem: ok[0]!.certificatePem,
          clientKeyPem: keys[ok[0]!.i]!.keyPem,
        });
        agents.push(agent);
        const states = ["INITIAL_SYNC", "CONTINUOUS", "BACKLOG", "CONTINUOUS", "RESCAN", "CONTINUOUS"];
        // each state is sent through both processes at once, then read back through one of them
        for (const [n, state] of states.entries()) {
          await Promise.all(
            [a, b].map((s) =>
              fetchJson(agent, `${s.url}/api/v1/agent/heartbeat`, { body: { state, lagSeconds: n } }),
            ),
          );
          const seen = await fetchJson<{ state: string }>(
            d,
            `${(n % 2 ? b : a).url}/api/v1/servers/${ok[0]!.serverId}`,
            { headers: auth },
          );
          assert.equal(seen.state, state);
        }
        const events = await database.db.selectFrom("events").selectAll().orderBy("seq").execute();
        assert.deepEqual(
          events.map((e) => (JSON.parse(e.payload_json) as { to: string }).to),
          states,
          "one state event per change, however many processes saw it",
        );
        assert.deepEqual(
          events.map((e) => Number(e.seq)),
          events.map((_, i) => i + 1),
        );
        assert.equal((await verifyAudit(database)).ok, true);
      } finally {
        for (const x of agents) await x.close();
        await d.close();
        await Promise.all([stop(a), stop(b)]);
      }
    });
  }
});
