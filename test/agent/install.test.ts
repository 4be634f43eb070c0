/**
 * `lifeboat agent install|status|rescan|uninstall` as an operator runs them:
 * the CLI in a child process against a server started in this process on a
 * loopback port, with image files as disks.
 */
import assert from "node:assert/strict";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { agentConfigSchema, agentPaths, writeAgentStatus, type AgentStatus } from "../../src/agent/index.js";
import { installAgent, rescanRequestPath } from "../../src/agent/install.js";
import { openDatabase } from "../../src/control/db/index.js";
import { initServer } from "../../src/control/init.js";
import { type RunningServer, startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson } from "../../src/net/index.js";
import { captureLogger } from "../control/helpers.js";
import { type Run, lifeboat } from "../support/cli.js";

const errorCode = (r: Run) => (JSON.parse(r.stderr.trim().split("\n").pop()!) as { code: string }).code;
const mode = async (p: string) => (await stat(p)).mode & 0o777;

/** Every file under `dir`, with its content. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    out.set(p, await readFile(p, "latin1"));
  }
  return out;
}

void describe("agent install, status, rescan and uninstall", () => {
  let tmp = "";
  let server: RunningServer;
  let caFile = "";
  let admin: { call<T>(p: string, body?: unknown): Promise<T> };
  let image = "";
  let stopped = false;

  const newToken = async (uses = 1) =>
    (await admin.call<{ token: string }>("/api/v1/tokens", { role: "agent", uses })).token;
  const tokenFile = async (token: string, name: string) => {
    const f = path.join(tmp, name);
    await writeFile(f, `${token}\n`, { mode: 0o600 });
    return f;
  };
  const installArgs = (dir: string, ...more: string[]) => [
    "agent",
    "install",
    "--endpoint",
    server.url,
    "--config-dir",
    dir,
    "--disk-image",
    image,
    "--hostname",
    `host-${path.basename(dir)}`,
    "--json",
    ...more,
  ];

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-agent-install-"));
    const dataDir = path.join(tmp, "server");
    const init = await initServer({ dataDir, hostnames: ["127.0.0.1"] });
    server = await startServer(dataDir, {
      listen: "127.0.0.1:0",
      handleSignals: false,
      logger: captureLogger().logger,
    });
    caFile = path.join(dataDir, "ca.pem");
    const dispatcher = createApiDispatcher({ caPem: await readFile(caFile, "utf8") });
    admin = {
      call: (p, body) =>
        fetchJson(dispatcher, `${server.url}${p}`, {
          method: body === undefined ? "GET" : "POST",
          headers: { authorization: `Bearer ${init.adminApiKey}` },
          ...(body !== undefined ? { body } : {}),
        }),
    };
    image = path.join(tmp, "disk0.img");
    await writeFile(image, Buffer.alloc(1 << 20, 7));
  });
  after(async () => {
    if (!stopped) await server.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("installs from a token file: config, key and certificates, private modes; the server lists it", async () => {
    const dir = path.join(tmp, "a1");
    const token = await newToken();
    const args = installArgs(dir, "--ca-file", caFile, "--token-file", await tokenFile(token, "t1"));
    const r = await lifeboat(args);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      serverId: string;
      serverName: string;
      configDir: string;
      disks: Array<{ index: number; path: string; kind: string; id: string; sizeBytes: number }>;
    };
    assert.equal(out.configDir, dir);
    assert.deepEqual(out.disks, [{ index: 0, path: image, kind: "image", id: image, sizeBytes: 1 << 20 }]);

    const p = agentPaths(dir);
    assert.equal(await mode(dir), 0o700);
    assert.equal(await mode(p.state), 0o700);
    assert.equal(await mode(p.config), 0o600);
    assert.equal(await mode(p.key), 0o600);
    const config = agentConfigSchema.parse(JSON.parse(await readFile(p.config, "utf8")));
    assert.equal(config.serverId, out.serverId);
    assert.equal(config.endpoint, server.url);
    assert.equal(config.blockSize, 65536);
    assert.deepEqual(config.disks, [{ index: 0, path: image, kind: "image", id: image }]);
    assert.equal(await readFile(p.ca, "utf8"), await readFile(caFile, "utf8"));
    const cert = new X509Certificate(await readFile(p.cert));
    assert.ok(cert.checkPrivateKey(createPrivateKey(await readFile(p.key))));

    // The secret is nowhere on disk under D, nor in argv or the output.
    const secret = token.split(".").pop()!;
    for (const [file, text] of await snapshot(dir)) assert.ok(!text.includes(secret), file);
    assert.ok(!args.some((a) => a.includes(secret)));
    assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret));

    const listed = await admin.call<{
      servers: Array<{ id: string; inventory: { disks?: unknown[] } | null }>;
    }>("/api/v1/servers");
    const mine = listed.servers.find((s) => s.id === out.serverId);
    assert.ok(mine);
    assert.equal(mine.inventory?.disks?.length, 1);

    // Again: refused, and nothing changed.
    const before = await snapshot(dir);
    const again = await lifeboat(
      installArgs(dir, "--ca-file", caFile, "--token-file", await tokenFile(await newToken(), "t1b")),
    );
    assert.equal(again.code, 1);
    assert.equal(errorCode(again), "AGENT_ALREADY_INSTALLED");
    assert.deepEqual(await snapshot(dir), before);

    // Human output: each written path, then the server.
    const human = path.join(tmp, "a1h");
    const h = await lifeboat(
      installArgs(
        human,
        "--ca-file",
        caFile,
        "--token-file",
        await tokenFile(await newToken(), "t1h"),
      ).filter((a) => a !== "--json"),
    );
    assert.equal(h.code, 0, h.stderr);
    const lines = h.stdout.trim().split("\n");
    const hp = agentPaths(human);
    assert.deepEqual(lines.slice(0, -1), [hp.key, hp.cert, hp.ca, hp.config]);
    assert.match(lines.at(-1)!, /^server \S+ \(\S+\)$/);
  });

  void it("takes the token from standard input, and pins the CA by fingerprint", async () => {
    const dir = path.join(tmp, "a2");
    const fingerprint = new X509Certificate(await readFile(caFile)).fingerprint256;
    const r = await lifeboat(installArgs(dir, "--ca-fingerprint", fingerprint), {
      stdin: `${await newToken()}\n`,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await readFile(agentPaths(dir).ca, "utf8"), await readFile(caFile, "utf8"));
  });

  void it("takes the token from LIFEBOAT_TOKEN", async () => {
    const dir = path.join(tmp, "a3");
    const r = await lifeboat(installArgs(dir, "--ca-file", caFile), {
      env: { LIFEBOAT_TOKEN: await newToken() },
    });
    assert.equal(r.code, 0, r.stderr);
  });

  void it("refuses without a token, without a CA, with a bad token or a wrong fingerprint, and leaves nothing", async () => {
    const dir = path.join(tmp, "bad");
    const noToken = await lifeboat(installArgs(dir, "--ca-file", caFile));
    assert.equal(noToken.code, 2);
    assert.equal(errorCode(noToken), "USAGE");
    const noCa = await lifeboat(installArgs(dir, "--token-file", await tokenFile(await newToken(), "t4")));
    assert.equal(noCa.code, 2);
    assert.equal(errorCode(noCa), "USAGE");

    const bad = await lifeboat(installArgs(dir, "--ca-file", caFile), { stdin: "abc.def\n" });
    assert.equal(bad.code, 1);
    assert.equal(errorCode(bad), "TOKEN_INVALID");
    await assert.rejects(stat(dir), { code: "ENOENT" });

    const wrong = await lifeboat(installArgs(dir, "--ca-fingerprint", "ab".repeat(32)), {
      stdin: await newToken(),
    });
    assert.equal(wrong.code, 1);
    assert.equal(errorCode(wrong), "NET_CA_MISMATCH");
    await assert.rejects(stat(dir), { code: "ENOENT" });

    const notFile = await lifeboat(
      [
        "agent",
        "install",
        "--endpoint",
        server.url,
        "--config-dir",
        dir,
        "--ca-file",
        caFile,
        "--json",
      ].concat(["--disk-image", tmp]),
      { stdin: await newToken() },
    );
    assert.equal(errorCode(notFile), "AGENT_DISK_INVALID");
    const notDevice = await lifeboat(
      [
        "agent",
        "install",
        "--endpoint",
        server.url,
        "--config-dir",
        dir,
        "--ca-file",
        caFile,
        "--json",
      ].concat(["--devices", image]),
      { stdin: await newToken() },
    );
    assert.equal(errorCode(notDevice), "AGENT_DISK_INVALID");
    await assert.rejects(stat(dir), { code: "ENOENT" });
  });

  void it("status: STOPPED without a running agent; a live agent's state otherwise", async () => {
    const dir = path.join(tmp, "a1");
    const none = await lifeboat(["agent", "status", "--config-dir", dir, "--json"]);
    assert.equal(none.code, 0, none.stderr);
    const s0 = JSON.parse(none.stdout) as AgentStatus & { configDir: string };
    assert.equal(s0.state, "STOPPED");
    assert.equal(s0.configDir, dir);
    assert.ok(
      Array.isArray(s0.disks) && typeof s0.lagSeconds === "number" && typeof s0.backlogBytes === "number",
    );

    const status: AgentStatus = {
      state: "INITIAL_SYNC",
      tracker: "trace",
      lagSeconds: 3,
      backlogBytes: 1 << 20,
      disks: [
        {
          index: 0,
          path: image,
          sizeBytes: 1 << 20,
          state: "INITIAL_SYNC",
          progress: { doneBytes: 1 << 19, totalBytes: 1 << 20, bytesPerSecond: 1000, etaSeconds: 524 },
          dirtyBytes: 4096,
        },
      ],
      serverId: s0.serverId,
      pid: process.pid,
      updatedAt: Date.now(),
      connected: true,
      counters: { bytesRead: 1, bytesSent: 1, blocksSent: 1, rescans: 0, traceLosses: 0 },
    };
    await writeAgentStatus(agentPaths(dir).status, status);
    const live = await lifeboat(["agent", "status", "--config-dir", dir, "--json"]);
    const s1 = JSON.parse(live.stdout) as AgentStatus;
    assert.equal(s1.state, "INITIAL_SYNC");
    assert.equal(s1.disks[0]!.progress?.doneBytes, 1 << 19);
    const human = await lifeboat(["agent", "status", "--config-dir", dir]);
    assert.match(human.stdout, /^state\s+INITIAL_SYNC$/m);
    assert.match(human.stdout, /disk 0 .* 50\.0% ETA 524s/);

    // Stale, or written by a process that is gone: STOPPED, the rest kept.
    await writeAgentStatus(agentPaths(dir).status, { ...status, updatedAt: Date.now() - 60_000 });
    const stale = JSON.parse(
      (await lifeboat(["agent", "status", "--config-dir", dir, "--json"])).stdout,
    ) as AgentStatus;
    assert.equal(stale.state, "STOPPED");
    assert.equal(stale.lagSeconds, 3);
    await writeAgentStatus(agentPaths(dir).status, { ...status, pid: 2 ** 22 + 1 });
    const gone = JSON.parse(
      (await lifeboat(["agent", "status", "--config-dir", dir, "--json"])).stdout,
    ) as AgentStatus;
    assert.equal(gone.state, "STOPPED");

    const missing = await lifeboat(["agent", "status", "--config-dir", path.join(tmp, "nothing"), "--json"]);
    assert.equal(errorCode(missing), "AGENT_NOT_INSTALLED");
  });

  void it("rescan: writes the request, and signals a running agent", async () => {
    const dir = path.join(tmp, "a1");
    await rm(agentPaths(dir).status, { force: true });
    const idle = await lifeboat(["agent", "rescan", "--config-dir", dir, "--json"]);
    assert.equal(idle.code, 0, idle.stderr);
    assert.deepEqual(JSON.parse(idle.stdout), { requested: true, disks: null, delivered: false });
    const req = JSON.parse(await readFile(rescanRequestPath(dir), "utf8")) as {
      disks: null;
      requestedAt: number;
    };
    assert.equal(req.disks, null);
    assert.ok(Math.abs(req.requestedAt - Date.now()) < 60_000);

    // This test process plays the running agent.
    let signals = 0;
    const onSignal = () => void signals++;
    process.on("SIGUSR2", onSignal);
    try {
      await writeAgentStatus(agentPaths(dir).status, {
        state: "CONTINUOUS",
        tracker: "trace",
        lagSeconds: 0,
        backlogBytes: 0,
        disks: [],
        serverId: "x",
        pid: process.pid,
        updatedAt: Date.now(),
        connected: true,
        counters: { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 },
      });
      const live = await lifeboat(["agent", "rescan", "--config-dir", dir, "--disk", "0", "--json"]);
      assert.deepEqual(JSON.parse(live.stdout), { requested: true, disks: [0], delivered: true });
      for (let i = 0; signals === 0 && i < 100; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(signals, 1);
      const unknown = await lifeboat(["agent", "rescan", "--config-dir", dir, "--disk", "5", "--json"]);
      assert.equal(unknown.code, 2);
    } finally {
      process.off("SIGUSR2", onSignal);
      await rm(agentPaths(dir).status, { force: true });
    }
  });

  void it("uninstall deregisters (decommissioned, certificate refused) and removes the directory", async () => {
    const dir = path.join(tmp, "a1");
    const p = agentPaths(dir);
    const config = agentConfigSchema.parse(JSON.parse(await readFile(p.config, "utf8")));
    const tls = {
      caPem: await readFile(p.ca, "utf8"),
      clientCertPem: await readFile(p.cert, "utf8"),
      clientKeyPem: await readFile(p.key, "utf8"),
    };
    const r = await lifeboat(["agent", "uninstall", "--config-dir", dir, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { deregistered: boolean }).deregistered, true);
    await assert.rejects(stat(dir), { code: "ENOENT" });
    const shown = await admin.call<{ state: string }>(`/api/v1/servers/${config.serverId}`);
    assert.equal(shown.state, "DECOMMISSIONED");
    await assert.rejects(
      fetchJson(createApiDispatcher(tls), `${server.url}/api/v1/agent/heartbeat`, {
        body: { state: "CONTINUOUS" },
      }),
      (err) => isLifeboatError(err) && err.code !== "INTERNAL",
    );
    await assert.rejects(
      fetchJson(createApiDispatcher(tls), `${server.url}/api/v1/agent/deregister`, { body: {} }),
      (err) => isLifeboatError(err),
    );
    const database = await openDatabase(`sqlite:${path.join(tmp, "server", "lifeboat.db")}`);
    try {
      const audit = await database.db
        .selectFrom("audit_log")
        .select(["actor", "target", "result"])
        .where("action", "=", "agent.deregister")
        .orderBy("seq")
        .execute();
      assert.deepEqual(audit[0], {
        actor: `agent:${config.serverId}`,
        target: `server:${config.serverId}`,
        result: "ok",
      });
    } finally {
      await database.close();
    }
  });

  void it("uninstall --keep-config removes only the key", async () => {
    const dir = path.join(tmp, "a3");
    const r = await lifeboat(["agent", "uninstall", "--config-dir", dir, "--keep-config"]);
    assert.equal(r.code, 0, r.stderr);
    await assert.rejects(stat(agentPaths(dir).key), { code: "ENOENT" });
    await stat(agentPaths(dir).config);
  });

  void it("a failure after registration leaves no half installation and deregisters", async () => {
    const dir = path.join(tmp, "half");
    await mkdir(dir, { mode: 0o700 });
    await writeFile(path.join(dir, "state"), "in the way"); // saveAgentConfig cannot make D/state
    await assert.rejects(
      installAgent({
        configDir: dir,
        endpoint: server.url,
        token: await newToken(),
        caPem: await readFile(caFile, "utf8"),
        hostname: "host-half",
        blockSize: 65536,
        disks: [{ path: image, kind: "image", id: image, sizeBytes: 1 << 20 }],
        inventory: {},
      }),
    );
    assert.deepEqual(await readdir(dir), ["state"]);
    const listed = await admin.call<{ servers: Array<{ name: string }> }>("/api/v1/servers");
    assert.ok(!listed.servers.some((x) => x.name === "host-half"), "the new server was deregistered");
  });

  void it("describes the deregister route in the OpenAPI document", async () => {
    const doc = await admin.call<{ paths: Record<string, { post?: { responses?: object } }> }>(
      "/api/v1/openapi.json",
    );
    assert.ok(doc.paths["/api/v1/agent/deregister"]?.post?.responses);
  });

  void it("uninstall with the server down: refused without --force, done with it", async () => {
    const dir = path.join(tmp, "a2");
    await server.close();
    stopped = true;
    const refused = await lifeboat(["agent", "uninstall", "--config-dir", dir, "--json"]);
    assert.equal(refused.code, 1);
    const e = JSON.parse(refused.stderr.trim()) as { code: string; hint: string };
    assert.equal(e.code, "NET_UNREACHABLE");
    assert.match(e.hint, /--force/);
    await stat(agentPaths(dir).config);
    const forced = await lifeboat(["agent", "uninstall", "--config-dir", dir, "--force", "--json"]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal((JSON.parse(forced.stdout) as { deregistered: boolean }).deregistered, false);
    await assert.rejects(stat(dir), { code: "ENOENT" });

    // A damaged config.json: only --force removes it.
    const broken = path.join(tmp, "broken");
    await mkdir(path.join(broken, "state"), { recursive: true });
    await writeFile(path.join(broken, "config.json"), "{");
    const damaged = await lifeboat(["agent", "uninstall", "--config-dir", broken, "--json"]);
    assert.equal(errorCode(damaged), "AGENT_CONFIG_INVALID");
    const cleared = await lifeboat(["agent", "uninstall", "--config-dir", broken, "--force", "--json"]);
    assert.equal(cleared.code, 0, cleared.stderr);
    await assert.rejects(stat(broken), { code: "ENOENT" });
  });
});
