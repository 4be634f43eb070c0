/**
 * `lifeboat server init`, `token`, `servers` and `audit verify` as an
 * operator runs them: the CLI in a child process against a server started
 * in this process on a loopback port.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { forEachDatabase, connectionUrl } from "../support/databases.js";
import { captureLogger } from "../control/helpers.js";
import { runLifeboat } from "../support/cli.js";

const ROOT = path.resolve(import.meta.dirname, "../../..");
const BIN = path.join(ROOT, "bin", "lifeboat.js");

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-server-cli-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function lifeboat(args: string[], extraEnv: Record<string, string> = {}): ReturnType<typeof runLifeboat> {
  return runLifeboat(args, tmp, extraEnv);
}

forEachDatabase("server CLI", (open, dialect) => {
  void it("init, token create/list/revoke, servers list/show and audit verify", async () => {
    const database = await open();
    const dir = path.join(tmp, dialect);
    const init = await lifeboat([
      "server",
      "init",
      "--data-dir",
      dir,
      "--db",
      await connectionUrl(database),
      "--hostname",
      "127.0.0.1",
      "--json",
    ]);
    assert.equal(init.code, 0, init.stderr);
    const made = JSON.parse(init.stdout) as {
      created: string[];
      adminApiKeyFile: string;
      adminApiKey?: string;
    };
    assert.equal(made.adminApiKey, undefined, "no key without --show-key");
    const keyFile = path.join(dir, "admin-api.key");
    assert.equal(made.adminApiKeyFile, keyFile);
    const secret = (await readFile(keyFile, "utf8")).trim();
    assert.ok(!init.stdout.includes(secret) && !init.stderr.includes(secret));
    const again = await lifeboat(["server", "init", "--data-dir", dir, "--json"]);
    assert.equal(again.code, 1);
    assert.equal((JSON.parse(again.stderr) as { code: string }).code, "SERVER_EXISTS");

    const { logger } = captureLogger();
    const server = await startServer(dir, { listen: "127.0.0.1:0", logger, handleSignals: false });
    try {
      const ca = ["--endpoint", server.url, "--ca-file", path.join(dir, "ca.pem")];
      const fingerprint = new X509Certificate(await readFile(path.join(dir, "ca.pem"))).fingerprint256;
      const tokenFile = path.join(tmp, `${dialect}-token`);
      const created = await lifeboat([
        "token",
        "create",
        "--role",
        "agent",
        "--ttl",
        "2h",
        "--server-name",
        "web-9",
        "--out",
        tokenFile,
        "--json",
        ...ca,
        "--api-key-file",
        keyFile,
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal((await stat(tokenFile)).mode & 0o777, 0o600);
      const token = (await readFile(tokenFile, "utf8")).trim();
      assert.ok(!created.stdout.includes(token));
      const view = JSON.parse(created.stdout) as { id: string; serverName: string };
      assert.equal(view.serverName, "web-9");

      const list = await lifeboat(
        ["token", "list", "--json", "--endpoint", server.url, "--ca-fingerprint", fingerprint],
        { LIFEBOAT_API_KEY_FILE: keyFile },
      );
      assert.equal(list.code, 0, list.stderr);
      assert.deepEqual(
        (JSON.parse(list.stdout) as { tokens: { id: string }[] }).tokens.map((t) => t.id),
        [view.id],
      );
      assert.ok(!list.stdout.includes(token.split(".")[1]!));

      // an agent registers with the token
      const { csrPem } = await generateKeyAndCsr({ commonName: "web-9" });
      const d = createApiDispatcher({ caPem: await readFile(path.join(dir, "ca.pem"), "utf8") });
      const reg = await fetchJson<{ serverId: string }>(d, `${server.url}/api/v1/register`, {
        body: { token, csr: csrPem, hostname: "host9" },
      });
      await d.close();
      const servers = await lifeboat(["servers", "list", "--json", ...ca, "--api-key-file", keyFile]);
      assert.equal(servers.code, 0, servers.stderr);
      const listed = JSON.parse(servers.stdout) as { servers: { id: string; name: string }[] };
      assert.deepEqual(
        listed.servers.map((s) => [s.id, s.name]),
        [[reg.serverId, "web-9"]],
      );
      const show = await lifeboat(["servers", "show", "web-9", "--json", ...ca, "--api-key-file", keyFile]);
      assert.equal((JSON.parse(show.stdout) as { id: string }).id, reg.serverId);
      const missing = await lifeboat(["servers", "show", "nope", "--json", ...ca, "--api-key-file", keyFile]);
      assert.equal(missing.code, 1);
      assert.equal((JSON.parse(missing.stderr) as { code: string }).code, "SERVER_NOT_FOUND");

      const revoked = await lifeboat([
        "token",
        "revoke",
        view.id,
        "--json",
        ...ca,
        "--api-key-file",
        keyFile,
      ]);
      assert.equal(revoked.code, 0, revoked.stderr);
      assert.ok((JSON.parse(revoked.stdout) as { revokedAt: string | null }).revokedAt);
      const noKey = await lifeboat(["token", "list", ...ca, "--json"]);
      assert.equal(noKey.code, 2);
    } finally {
      await server.close();
    }

    const ok = await lifeboat(["audit", "verify", "--data-dir", dir, "--json"]);
    assert.equal(ok.code, 0, ok.stderr);
    const verdict = JSON.parse(ok.stdout) as { ok: boolean; records: number };
    assert.equal(verdict.ok, true);
    assert.ok(verdict.records >= 3);
    await database.db
      .updateTable("audit_log")
      .set({ result: "ok", actor: "someone else" })
      .where("seq", "=", 1)
      .execute();
    const broken = await lifeboat(["audit", "verify", "--data-dir", dir, "--json"]);
    assert.equal(broken.code, 3);
    assert.equal((JSON.parse(broken.stdout) as { ok: boolean; firstBadSeq: number }).firstBadSeq, 1);
  });

  void it("server start listens with TLS, answers /healthz and stops cleanly on SIGTERM", async () => {
    const database = await open();
    const dir = path.join(tmp, `${dialect}-start`);
    const init = await lifeboat([
      "server",
      "init",
      "--data-dir",
      dir,
      "--db",
      await connectionUrl(database),
      "--listen",
      "127.0.0.1:0",
      "--show-key",
    ]);
    assert.equal(init.code, 0, init.stderr);
    const lines = init.stdout.trim().split("\n");
    assert.equal(
      lines.at(-1),
      (await readFile(path.join(dir, "admin-api.key"), "utf8")).trim(),
      "--show-key prints the key",
    );
    assert.ok(lines.includes(path.join(dir, "config.json")));
    const env: NodeJS.ProcessEnv = { HOME: tmp };
    for (const [k, v] of Object.entries(process.env))
      if (!k.startsWith("LIFEBOAT_") && k !== "HOME" && k !== "UV_THREADPOOL_SIZE") env[k] = v;
    const child = spawn(process.execPath, [BIN, "server", "start", "--data-dir", dir], { cwd: tmp, env });
    let stderr = "";
    const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
    const address = await new Promise<string>((resolve, reject) => {
      child.stderr.on("data", (d: Buffer) => {
        stderr += d.toString();
        const m = /"address":"([^"]+)"/.exec(stderr);
        if (m) resolve(m[1]!);
      });
      child.once("close", () => reject(new Error(`server exited: ${stderr}`)));
    });
    const d = createApiDispatcher({ caPem: await readFile(path.join(dir, "ca.pem"), "utf8") });
    try {
      const health = await fetchJson<{ status: string; time: number }>(d, `https://${address}/healthz`);
      assert.equal(health.status, "ok");
      assert.ok(Math.abs(health.time - Date.now()) < 60_000, "/healthz answers the server's time");
      assert.deepEqual(await fetchJson(d, `https://${address}/readyz`), { status: "ready" });
      // bin/lifeboat.js sets UV_THREADPOOL_SIZE before libuv starts its pool (16 threads for file
      // I/O, which fsyncs occupy); set too late, the pool keeps its default 4 and the process ~11.
      const threads = (await readdir(`/proc/${child.pid}/task`)).length;
      assert.ok(threads >= 18, `the server runs ${threads} threads: libuv's pool is not 16`);
    } finally {
      await d.close();
      child.kill("SIGTERM"); // also when a check above failed: no server outlives the test
    }
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /server stopped/);
    const secret = (await readFile(path.join(dir, "admin-api.key"), "utf8")).trim().split(".")[1]!;
    assert.ok(!stderr.includes(secret));
  });
});
