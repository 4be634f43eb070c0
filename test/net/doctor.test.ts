/**
 * The connectivity doctor against a real server (control plane and embedded
 * replicator on one TLS port, `server start` in a temporary directory), over
 * real TCP on loopback: every step ok with the right CA, each failure where
 * the issue says it belongs, the token checked without being spent.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { request } from "undici";
import type { Clock } from "../../src/base/index.js";
import {
  type DoctorReport,
  type DoctorStep,
  certFingerprint,
  createApiDispatcher,
  fetchJson,
  generateKeyAndCsr,
  runDoctor,
} from "../../src/net/index.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

function step(r: DoctorReport, name: string): DoctorStep {
  const s = r.steps.find((x) => x.name === name);
  assert.ok(s, `no step ${name} in ${JSON.stringify(r.steps)}`);
  return s;
}

const show = (r: DoctorReport) => JSON.stringify(r.steps, null, 1);
const shifted = (ms: number): Clock => ({
  now: () => Date.now() + ms,
  sleep: (t) => new Promise((res) => setTimeout(res, t)),
});

void describe("lifeboat doctor (client side)", () => {
  let tmp = "";
  let site: Site;
  let pin = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-doctor-"));
    site = await startSite(tmp);
    pin = certFingerprint(site.caPem);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  const newToken = async (uses = 1) =>
    await site.api<{ token: string; id: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses },
    });

  void it("passes every step with the right fingerprint and a token, which stays unspent", async () => {
    const { token } = await newToken();
    const r = await runDoctor({
      endpoint: site.url,
      caFingerprint: pin,
      token,
      timeoutMs: 3000,
      throughputBytes: 2 * 1024 * 1024,
    });
    assert.equal(r.ok, true, show(r));
    assert.deepEqual(
      r.steps.map((s) => [s.name, s.status]),
      [
        ["dns", "ok"],
        ["tcp", "ok"],
        ["tls", "ok"],
        ["health", "ok"],
        ["token", "ok"],
        ["clock", "ok"],
        ["data", "ok"],
        ["throughput", "ok"],
        ["proxy", "ok"],
      ],
      show(r),
    );
    assert.match(step(r, "dns").value, /127\.0\.0\.1 \(private\)/);
    assert.match(step(r, "tcp").value, new RegExp(`127\\.0\\.0\\.1:${site.port} [\\d.]+ ms`));
    assert.match(step(r, "tls").value, /TLSv1\.3, pinned CA/);
    assert.match(step(r, "token").value, /^valid, not spent/);
    assert.match(step(r, "clock").value, /0\.\d s (behind|ahead of) the server/);
    assert.match(step(r, "data").value, /lifeboat-wire\/1 in .*from the token check/);
    assert.match(step(r, "throughput").value, /^[\d.]+ Mbit\/s \(2 MiB in/);
    assert.match(step(r, "proxy").value, /direct to/);
    assert.ok(!JSON.stringify(r).includes(token.split(".")[1]!), "the token's secret is in the report");

    // Not spent: the token still registers an agent, and only then reads as used.
    const { csrPem } = await generateKeyAndCsr({ commonName: "doctor-host" });
    const d = createApiDispatcher({ caPem: site.caPem });
    try {
      const reg = await fetchJson<{ serverId: string }>(d, `${site.url}/api/v1/register`, {
        body: { token, csr: csrPem, hostname: "doctor-host" },
      });
      assert.match(reg.serverId, /^srv_/);
    } finally {
      await d.close();
    }
    const again = await runDoctor({ endpoint: site.url, caFingerprint: pin, token, timeoutMs: 3000 });
    assert.equal(step(again, "token").status, "fail");
    assert.equal(step(again, "token").code, "TOKEN_USED");
    assert.equal(step(again, "data").status, "skipped");
    assert.equal(step(again, "throughput").status, "skipped");
    assert.equal(again.ok, false);
  });

  void it("says a token is unknown or revoked, and skips token, data and throughput without one", async () => {
    const unknown = await runDoctor({
      endpoint: site.url,
      caPem: site.caPem,
      token: "tok_nothere.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      timeoutMs: 3000,
    });
    assert.equal(step(unknown, "token").code, "TOKEN_INVALID", show(unknown));
    const made = await newToken();
    await site.api(`/api/v1/tokens/${made.id}`, { method: "DELETE" });
    const revoked = await runDoctor({
      endpoint: site.url,
      caPem: site.caPem,
      token: made.token,
      timeoutMs: 3000,
    });
    assert.equal(step(revoked, "token").code, "TOKEN_REVOKED");

    const none = await runDoctor({ endpoint: site.url, caPem: site.caPem, timeoutMs: 3000 });
    assert.equal(none.ok, true, show(none));
    for (const name of ["token", "data", "throughput"])
      assert.equal(step(none, name).status, "skipped", name);
    assert.match(step(none, "token").hint, /--token-file/);
  });

  void it("the throughput route wants a valid token and at most 8 MiB, and spends nothing", async () => {
    const { token } = await newToken();
    const d = createApiDispatcher({ caPem: site.caPem });
    const post = async (body: Buffer, auth?: string) => {
      const res = await request(`${site.url}/api/v1/doctor/throughput`, {
        dispatcher: d,
        method: "POST",
        body,
        headers: {
          "content-type": "application/octet-stream",
          ...(auth !== undefined ? { authorization: `Bearer ${auth}` } : {}),
        },
      });
      return { status: res.statusCode, body: (await res.body.json()) as { code?: string; bytes?: number } };
    };
    try {
      const anonymous = await post(Buffer.alloc(1000));
      assert.equal(anonymous.status, 401);
      assert.equal(anonymous.body.code, "AUTH_REQUIRED");
      assert.equal((await post(Buffer.alloc(10), "tok_x.AAAAAAAAAAAAAAAAAAAAAAAA")).status, 401);
      assert.deepEqual(await post(Buffer.alloc(12345), token), { status: 200, body: { bytes: 12345 } });
      const big = await post(Buffer.alloc(8 * 1024 * 1024 + 1), token).catch((err: unknown) => err);
      // The server answers 413 as soon as the limit is passed; the client may see the answer or a reset.
      if (!(big instanceof Error)) assert.equal((big as { status: number }).status, 413);
      const check = await fetchJson<{ state: string }>(d, `${site.url}/api/v1/tokens/check`, {
        body: { token },
      });
      assert.equal(check.state, "valid");
    } finally {
      await d.close();
    }
  });

  void it("with an installed agent's identity: the data address from its settings, throughput by its certificate", async () => {
    const who = await site.register("doctor-agent");
    const r = await runDoctor({
      endpoint: site.url,
      caPem: site.caPem,
      identity: { certPem: who.certPem, keyPem: who.keyPem },
      timeoutMs: 3000,
      throughputBytes: 1024 * 1024,
    });
    assert.equal(r.ok, true, show(r));
    assert.equal(step(r, "token").status, "skipped");
    assert.match(step(r, "token").hint, /agent identity/);
    assert.match(step(r, "data").value, /lifeboat-wire\/1 in .*from the agent's settings/);
    assert.match(step(r, "throughput").value, /Mbit\/s \(1 MiB/);
  });

  void it("learns the data address of the pool's replicators, or the template's, from the token check", async () => {
    const dead = await closedPort();
    const repToken = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "replicator" },
    });
    const { csrPem } = await generateKeyAndCsr({ commonName: "rep-doctor" });
    const d = createApiDispatcher({ caPem: site.caPem });
    const check = async (token: string) =>
      fetchJson<{ dataAddresses?: string[] }>(d, `${site.url}/api/v1/tokens/check`, { body: { token } });
    let replicatorId = "";
    try {
      replicatorId = (
        await fetchJson<{ replicatorId: string }>(d, `${site.url}/api/v1/replicator/register`, {
          body: { token: repToken.token, csr: csrPem, name: "rep-doctor", address: `127.0.0.1:${dead}` },
        })
      ).replicatorId;
      // A replicator that is up is one the pool may choose for a new server.
      const { token } = await newToken();
      assert.deepEqual((await check(token)).dataAddresses, [`127.0.0.1:${dead}`]);
      const r = await runDoctor({ endpoint: site.url, caFingerprint: pin, token, timeoutMs: 3000 });
      const data = step(r, "data");
      assert.equal(data.status, "fail", show(r));
      assert.equal(data.code, "DOCTOR_TCP_REFUSED");
      assert.equal(data.value, `127.0.0.1:${dead}: connection refused (from the token check)`);
      // The throughput test still measures the way to the control plane, and says so.
      assert.match(
        step(r, "throughput").value,
        /to the control plane; the replicator at 127\.0\.0\.1:\d+ has no test/,
      );

      // Named by the template, it is the one, drained or not.
      await site.api(`/api/v1/replicators/${replicatorId}/drain`, { method: "POST", body: {} });
      assert.deepEqual((await check(token)).dataAddresses, []);
      await site.api("/api/v1/settings/replication", { method: "PUT", body: { replicatorId } });
      assert.deepEqual((await check(token)).dataAddresses, [`127.0.0.1:${dead}`]);
    } finally {
      await site.api("/api/v1/settings/replication", { method: "PUT", body: { replicatorId: null } });
      if (replicatorId)
        await site.api(`/api/v1/replicators/${replicatorId}/decommission`, { method: "POST", body: {} });
      await d.close();
    }
  });

  void it("fails at the TLS step with a wrong CA fingerprint, and sends nothing after it", async () => {
    const { token } = await newToken();
    const wrong = "ab".repeat(32);
    const r = await runDoctor({ endpoint: site.url, caFingerprint: wrong, token, timeoutMs: 3000 });
    assert.equal(r.ok, false);
    assert.equal(step(r, "dns").status, "ok");
    assert.equal(step(r, "tcp").status, "ok");
    const tls = step(r, "tls");
    assert.equal(tls.status, "fail", show(r));
    assert.equal(tls.code, "NET_CA_MISMATCH");
    assert.ok(tls.value.includes(pin), "the report names the CA the server presents");
    assert.match(tls.hint, /openssl x509 -noout -fingerprint -sha256/);
    for (const name of ["health", "token", "data", "throughput"])
      assert.equal(step(r, name).status, "skipped", name);
    // The clock is still read (nothing secret is sent for it).
    assert.match(step(r, "clock").value, /server not verified/);
  });

  void it("fails at TCP with the nothing-listening hint on a closed port", async () => {
    const port = await closedPort();
    const r = await runDoctor({ endpoint: `https://127.0.0.1:${port}`, caFingerprint: pin, timeoutMs: 2000 });
    const tcp = step(r, "tcp");
    assert.equal(tcp.status, "fail", show(r));
    assert.equal(tcp.code, "DOCTOR_TCP_REFUSED");
    assert.match(tcp.hint, /nothing listening/);
    assert.equal(step(r, "tls").status, "skipped");
    assert.equal(r.ok, false);
  });

  void it("measures the clock skew: a warning past 30 s, a failure past the certificates' 5 minutes", async () => {
    const ahead = await runDoctor({
      endpoint: site.url,
      caPem: site.caPem,
      timeoutMs: 3000,
      clock: shifted(-60_000),
    });
    const warned = step(ahead, "clock");
    assert.equal(warned.status, "warn", show(ahead));
    assert.equal(warned.code, "DOCTOR_CLOCK_SKEW");
    assert.match(warned.value, /^this host is 60\.\d s behind the server/);
    assert.equal(ahead.ok, true);

    const far = await runDoctor({
      endpoint: site.url,
      caPem: site.caPem,
      timeoutMs: 3000,
      clock: shifted(-10 * 60_000),
    });
    assert.equal(step(far, "clock").status, "fail", show(far));
    assert.match(step(far, "clock").value, /^this host is 60\d\.\d s behind/);
    // A clock 10 minutes behind also makes the fresh server certificate "not yet valid".
    assert.equal(step(far, "tls").status, "fail");
    assert.equal(far.ok, false);
  });

  void it("goes through an HTTP CONNECT proxy with --proxy, and honours NO_PROXY from the environment", async () => {
    const proxy = await connectProxy();
    const proxyUrl = proxy.url;
    const connects = () => proxy.connects();
    try {
      const { token } = await newToken();
      const r = await runDoctor({
        endpoint: site.url,
        caFingerprint: pin,
        token,
        proxy: proxyUrl,
        timeoutMs: 3000,
        throughputBytes: 1024 * 1024,
      });
      assert.equal(r.ok, true, show(r));
      assert.match(step(r, "tcp").value, /through http:\/\/127\.0\.0\.1/);
      assert.match(step(r, "proxy").value, /^--proxy http:\/\/127\.0\.0\.1:\d+\/ used/);
      assert.ok(connects().length >= 4, `CONNECTs seen: ${connects().join(", ")}`);

      const before = connects().length;
      const bypassed = await runDoctor({
        endpoint: site.url,
        caFingerprint: pin,
        proxyEnv: { httpsProxy: proxyUrl, noProxy: "localhost,127.0.0.0/8" },
        timeoutMs: 3000,
      });
      assert.equal(bypassed.ok, true, show(bypassed));
      assert.match(step(bypassed, "proxy").value, /NO_PROXY entry 127\.0\.0\.0\/8/);
      assert.equal(connects().length, before, "the proxy was used despite NO_PROXY");
    } finally {
      await proxy.close();
    }
  });
});

/** A loopback port nothing listens on (it was free a moment ago). */
function closedPort(): Promise<number> {
  return new Promise<number>((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** A minimal HTTP CONNECT proxy on loopback that records the targets asked for. */
async function connectProxy(): Promise<{
  url: string;
  connects: () => string[];
  close: () => Promise<void>;
}> {
  const { connect } = await import("node:net");
  const seen: string[] = [];
  const sockets = new Set<import("node:net").Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.once("data", (head: Buffer) => {
      const m = /^CONNECT (\S+):(\d+) HTTP/.exec(head.toString("latin1"));
      if (!m) return void client.end("HTTP/1.1 400 Bad Request\r\n\r\n");
      seen.push(`${m[1]}:${m[2]}`);
      const upstream = connect({ host: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) }, () => {
        client.write("HTTP/1.1 200 Connection established\r\n\r\n");
        client.pipe(upstream).pipe(client);
      });
      sockets.add(upstream);
      upstream.on("error", () => client.destroy());
      client.on("error", () => upstream.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    connects: () => [...seen],
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
