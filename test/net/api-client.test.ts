import assert from "node:assert/strict";
import { type Socket, createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import { request } from "undici";
import {
  type CaCredentials,
  certFingerprint,
  createApiDispatcher,
  createCa,
  fetchJson,
  generateKeyAndCsr,
  issueClientCert,
  issueServerCert,
} from "../../src/net/index.js";
import { type TestServer, startServer, thrown } from "./fixtures.js";

void describe("createApiDispatcher and fetchJson", () => {
  let ca: CaCredentials;
  let otherCa: CaCredentials;
  let right: TestServer;
  let wrong: TestServer;
  let misnamed: TestServer;
  let impostor: TestServer;
  let agentPosing: TestServer;
  const closers: { close(): Promise<void> }[] = [];
  const dispatcher = (opts: Parameters<typeof createApiDispatcher>[0]) => {
    const d = createApiDispatcher(opts);
    closers.push(d);
    return d;
  };

  before(async () => {
    ca = await createCa();
    otherCa = await createCa();
    right = await startServer(ca);
    wrong = await startServer(otherCa);
    misnamed = await startServer(ca, { hostnames: ["lifeboat.example.net"] });
    // Another CA's leaf for 127.0.0.1, with the pinned CA's own certificate sent after it.
    const foreign = await issueServerCert(otherCa, { hostnames: ["127.0.0.1"] });
    impostor = await startServer(ca, {
      present: { cert: foreign.certPem + ca.certPem, key: foreign.keyPem },
    });
    // An agent's client certificate (same CA, its own key) presented as a server certificate.
    const agentKey = await generateKeyAndCsr({ commonName: "x" });
    const agentCert = await issueClientCert(ca, agentKey.csrPem, { role: "agent", subjectId: "127.0.0.1" });
    agentPosing = await startServer(ca, {
      present: { cert: agentCert.certPem + ca.certPem, key: agentKey.keyPem },
    });
  });
  after(async () => {
    await Promise.all(closers.map((c) => c.close()));
    await Promise.all([right, wrong, misnamed, impostor, agentPosing].map((s) => s.close()));
  });

  void describe("with only a pinned CA fingerprint", () => {
    void it("connects to a server whose chain holds the pinned CA", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      assert.deepEqual(await fetchJson(d, `${right.url}/healthz`), { ok: true });
    });

    void it("takes the fingerprint without colons, in lowercase, or as openssl's whole line", async () => {
      const fp = certFingerprint(ca.certPem);
      for (const pin of [fp.replace(/:/g, "").toLowerCase(), `sha256 Fingerprint=${fp}`]) {
        assert.deepEqual(await fetchJson(dispatcher({ caFingerprint: pin }), `${right.url}/healthz`), {
          ok: true,
        });
      }
    });

    void it("fails with NET_CA_MISMATCH against a server from another CA", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      const err = await thrown(() => fetchJson(d, `${wrong.url}/healthz`));
      assert.equal(err.code, "NET_CA_MISMATCH");
      assert.match(err.message, new RegExp(certFingerprint(otherCa.certPem)));
      assert.match(err.hint, /--ca-fingerprint/);
      assert.match(err.hint, /openssl x509 .*-fingerprint -sha256/);
    });

    void it("fails with NET_CA_MISMATCH when the pinned CA is sent but did not sign the leaf", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      const err = await thrown(() => fetchJson(d, `${impostor.url}/healthz`));
      assert.equal(err.code, "NET_CA_MISMATCH");
    });

    void it("refuses a leaf that does not name the host", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      const err = await thrown(() => fetchJson(d, `${misnamed.url}/healthz`));
      assert.equal(err.code, "NET_SERVER_NAME_MISMATCH");
    });

    void it("refuses a client certificate of the same CA posing as the server", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      const err = await thrown(() => fetchJson(d, `${agentPosing.url}/healthz`));
      assert.equal(err.code, "NET_TLS_FAILED");
      assert.match(err.message, /not a TLS server certificate/);
    });

    void it("refuses a fingerprint that is not 64 hex digits before connecting", () => {
      assert.throws(() => createApiDispatcher({ caFingerprint: "AB:CD" }), {
        code: "NET_FINGERPRINT_INVALID",
      });
    });

    void it("gives undici's request the same LifeboatError", async () => {
      const d = dispatcher({ caFingerprint: certFingerprint(ca.certPem) });
      await assert.rejects(request(`${wrong.url}/healthz`, { dispatcher: d }), { code: "NET_CA_MISMATCH" });
    });
  });

  void describe("with the CA file", () => {
    void it("connects to the server the CA issued for", async () => {
      assert.deepEqual(await fetchJson(dispatcher({ caPem: ca.certPem }), `${right.url}/healthz`), {
        ok: true,
      });
    });

    void it("fails with NET_CA_MISMATCH against a server from another CA", async () => {
      const err = await thrown(() => fetchJson(dispatcher({ caPem: ca.certPem }), `${wrong.url}/healthz`));
      assert.equal(err.code, "NET_CA_MISMATCH");
      assert.match(err.hint, /--ca-file/);
    });

    void it("fails with NET_SERVER_NAME_MISMATCH when the certificate does not name the host", async () => {
      const err = await thrown(() => fetchJson(dispatcher({ caPem: ca.certPem }), `${misnamed.url}/healthz`));
      assert.equal(err.code, "NET_SERVER_NAME_MISMATCH");
    });

    void it("refuses a CA file that does not match the pinned fingerprint", () => {
      assert.throws(
        () => createApiDispatcher({ caPem: ca.certPem, caFingerprint: certFingerprint(otherCa.certPem) }),
        { code: "NET_CA_MISMATCH" },
      );
    });
  });

  void describe("fetchJson errors", () => {
    void it("rebuilds the server's {code, message, hint}", async () => {
      const d = dispatcher({ caPem: ca.certPem });
      const err = await thrown(() =>
        fetchJson(d, `${right.url}/conflict`, { method: "POST", body: { name: "db1" } }),
      );
      assert.deepEqual(err.toJSON(), {
        code: "SERVER_EXISTS",
        message: "a server named db1 exists",
        hint: "choose another name",
      });
      assert.equal(err.retryable, false);
    });

    void it("makes NET_HTTP_<status> when the body has no code", async () => {
      const err = await thrown(() => fetchJson(dispatcher({ caPem: ca.certPem }), `${right.url}/nowhere`));
      assert.equal(err.code, "NET_HTTP_404");
    });

    void it("maps a refused connection to NET_UNREACHABLE", async () => {
      const port = await freePort();
      const err = await thrown(() =>
        fetchJson(dispatcher({ caPem: ca.certPem }), `https://127.0.0.1:${port}/healthz`),
      );
      assert.equal(err.code, "NET_UNREACHABLE");
      assert.equal(err.retryable, true);
      assert.match(err.message, new RegExp(`127.0.0.1:${port}`));
    });

    void it("maps a server that does not answer in time to NET_TIMEOUT", async () => {
      const d = dispatcher({ caPem: ca.certPem });
      const err = await thrown(() => fetchJson(d, `${right.url}/slow`, { timeoutMs: 200 }));
      assert.equal(err.code, "NET_TIMEOUT");
      assert.equal(err.retryable, true);
    });

    void it("maps a peer that does not speak TLS to NET_TLS_FAILED", async () => {
      const sockets: Socket[] = [];
      const plain = createServer((socket) => {
        sockets.push(socket);
        socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
      });
      await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
      const address = plain.address();
      const port = typeof address === "object" && address ? address.port : 0;
      try {
        const err = await thrown(() =>
          fetchJson(dispatcher({ caPem: ca.certPem }), `https://127.0.0.1:${port}/`),
        );
        assert.equal(err.code, "NET_TLS_FAILED");
      } finally {
        // The half-closed server side may outlive the client's destroyed TLS socket; end it here.
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => plain.close(resolve));
      }
    });

    void it("refuses plain http:// endpoints", async () => {
      const err = await thrown(() =>
        fetchJson(dispatcher({ caPem: ca.certPem }), `http://127.0.0.1:1/healthz`),
      );
      assert.equal(err.code, "NET_TLS_FAILED");
    });
  });
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const address = s.address();
  await new Promise((resolve) => s.close(resolve));
  return typeof address === "object" && address ? address.port : 0;
}
