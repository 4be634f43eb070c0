/**
 * `lifeboat doctor` as an operator runs it: the human report and --json
 * against a running server, exit statuses, the token read from a file and
 * never printed; a port whose packets are dropped (a network namespace whose
 * only route leads to a neighbour that does not exist, so every packet vanishes)
 * failing at TCP with the firewall hint within --timeout; and `--server` on
 * a data directory, finding a key file left 0644.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { initServer } from "../../src/control/init.js";
import { startServer } from "../../src/control/start.js";
import { certFingerprint, type DoctorReport } from "../../src/net/index.js";
import { strictCapabilities } from "../support/capabilities.js";
import { BIN, lifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { silentLogger } from "../../src/base/index.js";

const parse = (stdout: string) => JSON.parse(stdout) as DoctorReport;
const statusOf = (r: DoctorReport, name: string) => r.steps.find((s) => s.name === name)?.status;

void describe("lifeboat doctor (command line)", () => {
  let tmp = "";
  let site: Site;
  let pin = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-doctor-cli-"));
    site = await startSite(tmp);
    pin = certFingerprint(site.caPem);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("prints one aligned line per step and exits 0; --json has steps and ok; the token never shows", async () => {
    const made = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent" },
    });
    const tokenFile = path.join(tmp, "token");
    await writeFile(tokenFile, `${made.token}\n`, { mode: 0o600 });
    const args = ["doctor", "--endpoint", site.url, "--ca-fingerprint", pin, "--token-file", tokenFile];
    const noAgent = ["--config-dir", path.join(tmp, "no-agent")];

    const human = await lifeboat([...args, ...noAgent, "--throughput", "1MiB"]);
    assert.equal(human.code, 0, human.stdout + human.stderr);
    const lines = human.stdout.trimEnd().split("\n");
    assert.deepEqual(
      lines.slice(0, -1).map((l) => l.split(/\s+/).slice(0, 2)),
      ["dns", "tcp", "tls", "health", "token", "clock", "data", "throughput", "proxy"].map((n) => [n, "ok"]),
      human.stdout,
    );
    // Aligned: the value starts at the same column on every line.
    const columns = new Set(lines.slice(0, -1).map((l) => /^\S+\s+\S+\s+\d+ ms {2}/.exec(l)?.[0].length));
    assert.equal(columns.size, 1, human.stdout);
    assert.equal(lines.at(-1), "ok: nothing failed");
    assert.match(human.stdout, /Mbit\/s/);

    const json = await lifeboat([...args, ...noAgent, "--json", "--throughput", "1MiB"]);
    assert.equal(json.code, 0, json.stderr);
    const r = parse(json.stdout);
    assert.equal(r.ok, true);
    for (const s of r.steps)
      assert.deepEqual(Object.keys(s).slice(0, 5).sort(), ["hint", "ms", "name", "status", "value"]);
    for (const out of [human.stdout, human.stderr, json.stdout, json.stderr])
      assert.ok(!out.includes(made.token.split(".")[1]!), "the token's secret was printed");

    // The same token piped on standard input, a wrong fingerprint: exit 1, TLS fails.
    const wrong = await lifeboat(
      ["doctor", "--endpoint", site.url, "--ca-fingerprint", "cd".repeat(32), ...noAgent, "--json"],
      { stdin: made.token },
    );
    assert.equal(wrong.code, 1, wrong.stderr);
    const w = parse(wrong.stdout);
    assert.equal(statusOf(w, "tls"), "fail");
    assert.equal(statusOf(w, "token"), "skipped");
  });

  void it("fails at TCP with the firewall hint when packets are dropped, within --timeout", async (t) => {
    const why = namespaceUnavailable();
    if (why !== null) {
      if (strictCapabilities) throw new Error(`under LIFEBOAT_TEST_STRICT=1: ${why}`);
      t.skip(why);
      return;
    }
    const ns = `lbdoc${process.pid}`;
    const ip = (...a: string[]) => {
      const r = spawnSync("ip", a, { encoding: "utf8" });
      assert.equal(r.status, 0, `ip ${a.join(" ")}: ${r.stderr}`);
    };
    ip("netns", "add", ns);
    try {
      // The namespace's one route leads over a veth pair to a neighbour whose hardware address
      // nobody has: what is sent there vanishes, as behind a firewall that drops (no refusal, no
      // ICMP), and only a timeout tells.
      ip("-n", ns, "link", "set", "lo", "up");
      ip("-n", ns, "link", "add", "drop0", "type", "veth", "peer", "name", "drop1");
      ip("-n", ns, "link", "set", "drop0", "up");
      ip("-n", ns, "link", "set", "drop1", "up");
      ip("-n", ns, "address", "add", "10.213.0.1/24", "dev", "drop0");
      ip(
        "-n",
        ns,
        "neigh",
        "add",
        "10.213.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "drop0",
        "nud",
        "permanent",
      );
      const started = Date.now();
      const r = await inNamespace(ns, [
        "doctor",
        "--endpoint",
        "https://10.213.0.2:443",
        "--ca-fingerprint",
        pin,
        "--timeout",
        "2s",
        "--config-dir",
        path.join(tmp, "no-agent"),
        "--json",
      ]);
      const elapsed = Date.now() - started;
      assert.equal(r.code, 1, r.stdout + r.stderr);
      const report = parse(r.stdout);
      const tcp = report.steps.find((s) => s.name === "tcp")!;
      assert.equal(tcp.status, "fail");
      assert.equal(tcp.code, "DOCTOR_TCP_TIMEOUT");
      assert.match(tcp.value, /10\.213\.0\.2:443: no answer in 2\.0 s/);
      assert.match(tcp.hint, /probably dropped by a firewall/i);
      assert.ok(tcp.ms >= 1900 && tcp.ms < 4000, `tcp took ${tcp.ms} ms`);
      assert.ok(elapsed < 15_000, `the doctor took ${elapsed} ms`);
      assert.equal(statusOf(report, "tls"), "skipped");
    } finally {
      spawnSync("ip", ["netns", "del", ns]);
    }
  });

  void it("--server checks the server's side, in use by itself, and finds a key file left 0644", async () => {
    const port = await freePort();
    const dataDir = path.join(tmp, "server2");
    await initServer({ dataDir, listen: `127.0.0.1:${port}` });
    const server = await startServer(dataDir, { logger: silentLogger, handleSignals: false });
    try {
      const good = await lifeboat(["doctor", "--server", "--data-dir", dataDir, "--json"]);
      assert.equal(good.code, 0, good.stdout + good.stderr);
      const r = parse(good.stdout);
      assert.deepEqual(
        r.steps.map((s) => [s.name, s.status]),
        [
          ["certificates", "ok"],
          ["permissions", "ok"],
          ["database", "ok"],
          ["repository", "ok"],
          ["listen", "ok"],
        ],
        good.stdout,
      );
      assert.match(r.steps.find((s) => s.name === "listen")!.value, /in use by this Lifeboat server/);
      assert.match(r.steps.find((s) => s.name === "repository")!.value, /GiB free of/);
    } finally {
      await server.close();
    }
    const key = path.join(dataDir, "keys", "server.key");
    await chmod(key, 0o644);
    const bad = await lifeboat(["doctor", "--server", "--config", path.join(dataDir, "config.json")]);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    const line = bad.stdout.split("\n").find((l) => l.startsWith("permissions"))!;
    assert.match(line, /^permissions\s+fail/);
    assert.ok(line.includes(`${key} 0644 (want 0600)`), line);
    assert.match(line, /FILE_MODE_INSECURE/);
    assert.match(bad.stdout, /^listen\s+ok .*free to bind/m);
  });
});

/** Why a network namespace with a veth pair cannot be made here, or null. */
function namespaceUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "network namespaces need root";
  if (spawnSync("sh", ["-c", "command -v ip"]).status !== 0) return "ip is not installed (iproute2)";
  const probe = `lbdocprobe${process.pid}`;
  const r = spawnSync("ip", ["netns", "add", probe], { encoding: "utf8" });
  if (r.status !== 0) return `cannot make a network namespace: ${r.stderr.trim()}`;
  const d = spawnSync("ip", ["-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], {
    encoding: "utf8",
  });
  spawnSync("ip", ["netns", "del", probe]);
  return d.status === 0 ? null : `no veth interfaces (kernel module veth): ${d.stderr.trim()}`;
}

function inNamespace(
  ns: string,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith("LIFEBOAT_") || /_proxy$/i.test(k)) delete env[k];
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, BIN, ...args], { env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end();
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}
