import assert from "node:assert/strict";
import { connect } from "node:tls";
import { after, before, describe, it } from "node:test";
import { request } from "undici";
import { ManualClock } from "../../src/base/index.js";
import {
  type CaCredentials,
  createApiDispatcher,
  createCa,
  fetchJson,
  generateKeyAndCsr,
  issueClientCert,
} from "../../src/net/index.js";
import { type TestServer, startServer, thrown } from "./fixtures.js";

const DAY = 24 * 3_600_000;

interface Whoami {
  role: string;
  subjectId: string;
  serial: string;
  notAfter: string;
  resumed: boolean;
}

/** A client with a key made by generateKeyAndCsr and a certificate issued from its CSR. */
async function client(
  ca: CaCredentials,
  opts: { subjectId: string; role?: "agent" | "replicator"; clock?: ManualClock; validityHours?: number },
  serverCa: CaCredentials,
) {
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: opts.subjectId });
  const cert = await issueClientCert(ca, csrPem, {
    role: opts.role ?? "agent",
    subjectId: opts.subjectId,
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.validityHours ? { validityHours: opts.validityHours } : {}),
  });
  const dispatcher = createApiDispatcher({
    caPem: serverCa.certPem,
    clientCertPem: cert.certPem,
    clientKeyPem: keyPem,
  });
  return { cert, dispatcher };
}

void describe("mutual TLS on a listener built with serverTlsOptions", () => {
  let ca: CaCredentials;
  let otherCa: CaCredentials;
  let server: TestServer;
  const revoked = new Set<string>();
  const dispatchers: { close(): Promise<void> }[] = [];

  before(async () => {
    ca = await createCa({ commonName: "Lifeboat CA test" });
    // Same name as the real CA: only the signature tells them apart.
    otherCa = await createCa({ commonName: "Lifeboat CA test" });
    server = await startServer(ca, { revoked });
  });
  after(async () => {
    await Promise.all(dispatchers.map((d) => d.close()));
    await server.close();
  });

  void it("accepts a client whose certificate was issued from its CSR and reports its identity", async () => {
    const c = await client(ca, { subjectId: "srv-0001", role: "agent" }, ca);
    dispatchers.push(c.dispatcher);
    const me = await fetchJson<Whoami>(c.dispatcher, `${server.url}/whoami`);
    assert.equal(me.role, "agent");
    assert.equal(me.subjectId, "srv-0001");
    assert.equal(me.serial, c.cert.serial);
    assert.equal(me.notAfter, c.cert.notAfter.toISOString());
  });

  void it("knows a replicator from an agent", async () => {
    const c = await client(ca, { subjectId: "rep-a", role: "replicator" }, ca);
    dispatchers.push(c.dispatcher);
    const me = await fetchJson<Whoami>(c.dispatcher, `${server.url}/whoami`);
    assert.deepEqual([me.role, me.subjectId], ["replicator", "rep-a"]);
  });

  void it("still knows the client on a new connection that resumes the TLS session", async () => {
    const c = await client(ca, { subjectId: "srv-resume" }, ca);
    dispatchers.push(c.dispatcher);
    const resumed: boolean[] = [];
    for (let i = 0; i < 3; i++) {
      // reset: the connection closes after each request, so the next one is new (and resumes).
      const res = await request(`${server.url}/whoami`, { dispatcher: c.dispatcher, reset: true });
      assert.equal(res.statusCode, 200);
      const me = (await res.body.json()) as Whoami;
      assert.equal(me.subjectId, "srv-resume");
      resumed.push(me.resumed);
    }
    assert.equal(resumed[0], false);
    assert.ok(resumed.slice(1).some(Boolean), `no connection resumed a session: ${resumed.join(", ")}`);
  });

  void it("lets a client without a certificate connect, and refuses it where one is required", async () => {
    const d = createApiDispatcher({ caPem: ca.certPem });
    dispatchers.push(d);
    assert.deepEqual(await fetchJson(d, `${server.url}/healthz`), { ok: true });
    const err = await thrown(() => fetchJson(d, `${server.url}/whoami`));
    assert.equal(err.code, "NET_CLIENT_CERT_REQUIRED");
    assert.match(err.hint, /regist/);
  });

  void it("refuses a client certificate from another CA with the same name", async () => {
    const c = await client(otherCa, { subjectId: "srv-0001" }, ca);
    dispatchers.push(c.dispatcher);
    const err = await thrown(() => fetchJson(c.dispatcher, `${server.url}/whoami`));
    assert.equal(err.code, "NET_CLIENT_CERT_UNTRUSTED");
    assert.equal(err.retryable, false);
  });

  void it("refuses an expired client certificate as expired", async () => {
    const past = new ManualClock(Date.now() - 30 * DAY);
    const c = await client(ca, { subjectId: "srv-old", clock: past, validityHours: 24 }, ca);
    dispatchers.push(c.dispatcher);
    const err = await thrown(() => fetchJson(c.dispatcher, `${server.url}/whoami`));
    assert.equal(err.code, "NET_CLIENT_CERT_EXPIRED");
    assert.match(err.message, /agent srv-old expired/);
  });

  void it("calls an expired certificate from another CA untrusted, not expired", async () => {
    const past = new ManualClock(Date.now() - 30 * DAY);
    const c = await client(otherCa, { subjectId: "srv-old", clock: past, validityHours: 24 }, ca);
    dispatchers.push(c.dispatcher);
    const err = await thrown(() => fetchJson(c.dispatcher, `${server.url}/whoami`));
    assert.equal(err.code, "NET_CLIENT_CERT_UNTRUSTED");
  });

  void it("judges validity by the injected clock, not the host's", async () => {
    const future = await startServer(ca, { clock: new ManualClock(Date.now() + 8 * DAY) });
    try {
      const c = await client(ca, { subjectId: "srv-fresh" }, ca);
      dispatchers.push(c.dispatcher);
      const res = await request(`${future.url}/whoami`, { dispatcher: c.dispatcher });
      assert.equal(res.statusCode, 401, "the ClientCertError's statusCode");
      assert.equal(((await res.body.json()) as { code: string }).code, "NET_CLIENT_CERT_EXPIRED");
    } finally {
      await future.close();
    }
  });

  void it("refuses a revoked serial, also on a connection opened before the revocation", async () => {
    const c = await client(ca, { subjectId: "srv-gone" }, ca);
    dispatchers.push(c.dispatcher);
    assert.equal((await fetchJson<Whoami>(c.dispatcher, `${server.url}/whoami`)).subjectId, "srv-gone");
    revoked.add(c.cert.serial);
    const err = await thrown(() => fetchJson(c.dispatcher, `${server.url}/whoami`));
    assert.equal(err.code, "NET_CLIENT_CERT_REVOKED");
    assert.match(err.message, new RegExp(c.cert.serial));
    const res = await request(`${server.url}/whoami`, { dispatcher: c.dispatcher });
    assert.equal(res.statusCode, 403);
    await res.body.dump();
  });

  void it("refuses a TLS 1.2 client at the handshake", async () => {
    const outcome = await new Promise<string>((resolve) => {
      const socket = connect({
        host: "127.0.0.1",
        port: server.port,
        maxVersion: "TLSv1.2",
        rejectUnauthorized: false,
      });
      socket.once("secureConnect", () => {
        socket.destroy();
        resolve("connected");
      });
      socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    assert.notEqual(outcome, "connected");
    assert.match(outcome, /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|ECONNRESET/);
  });

  void it("negotiates TLS 1.3 and sends the CA after the leaf", async () => {
    const chain = await new Promise<{ version: string | null; issuer: string | undefined }>(
      (resolve, reject) => {
        const socket = connect({
          host: "127.0.0.1",
          port: server.port,
          ca: ca.certPem,
          servername: "localhost",
        });
        socket.once("secureConnect", () => {
          const peer = socket.getPeerCertificate(true);
          resolve({
            version: socket.getProtocol(),
            issuer: peer.issuerCertificate?.subject?.CN as string | undefined,
          });
          socket.destroy();
        });
        socket.once("error", reject);
      },
    );
    assert.equal(chain.version, "TLSv1.3");
    assert.equal(chain.issuer, "Lifeboat CA test");
  });
});
