/**
 * The wire on the product's one port, with real certificates: HTTP and the
 * wire at once, refusals on the wire path, and malformed input that closes
 * one connection while the server keeps serving the others.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { type TLSSocket, connect } from "node:tls";
import { isLifeboatError } from "../../src/base/index.js";
import {
  type CaCredentials,
  certFingerprint,
  createApiDispatcher,
  createCa,
  fetchJson,
} from "../../src/net/index.js";
import {
  FrameDecoder,
  FrameType,
  type SequencedMessage,
  WIRE_ALPN,
  type WireMessage,
  connectWire,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "../../src/wire/index.js";
import {
  type Credentials,
  DISK,
  type TestWireServer,
  agentCredentials,
  agentSession,
  startWireServer,
} from "./fixtures.js";

function block(i: number): SequencedMessage {
  const data = Buffer.alloc(DISK.blockSize, i % 251);
  return {
    type: "BLOCKS",
    disk: 0,
    offset: (i % 1024) * DISK.blockSize,
    kind: "blocks",
    blocks: [{ encoding: "raw", sha256: createHash("sha256").update(data).digest(), data }],
  };
}

/** Opens a raw wire connection, writes `bytes`, and collects what comes back until the server closes it. */
async function rawExchange(
  port: number,
  opts: { creds?: Credentials; ca: string; bytes?: Buffer[] },
): Promise<{ messages: WireMessage[]; closed: boolean }> {
  const socket: TLSSocket = connect({
    host: "127.0.0.1",
    port,
    ca: opts.ca,
    ALPNProtocols: [WIRE_ALPN],
    minVersion: "TLSv1.3",
    ...(opts.creds ? { cert: opts.creds.certPem, key: opts.creds.keyPem } : {}),
  });
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  assert.equal(socket.alpnProtocol, WIRE_ALPN);
  const decoder = new FrameDecoder();
  const messages: WireMessage[] = [];
  socket.on("data", (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) messages.push(decodeMessage(f.type, f.payload));
  });
  for (const b of opts.bytes ?? []) socket.write(b);
  const closed = await new Promise<boolean>((resolve) => {
    socket.once("end", () => resolve(true));
    socket.once("close", () => resolve(true));
    setTimeout(() => resolve(false), 3000).unref();
  });
  socket.destroy();
  return { messages, closed };
}

const hello = encodeFrame({
  ...encodeMessage({
    type: "HELLO",
    versions: [1],
    agent: { serverId: "srv-raw", hostname: "raw", version: "test" },
    disks: [DISK],
  }),
  flags: 0,
  seq: 0,
});

void describe("the wire on the API's listener", () => {
  let server: TestWireServer;
  let creds: Credentials;
  const applied: number[] = [];

  before(async () => {
    server = await startWireServer({
      handlers: () => ({
        apply: (_msg, seq) => {
          applied.push(seq);
          return Promise.resolve();
        },
        have: (hashes) => Promise.resolve(hashes.map((h) => h[0] === 1)),
      }),
    });
    creds = await agentCredentials(server.ca, "srv-1");
  });
  after(() => server.close());

  void it("serves HTTP and the wire on one port at the same time", async () => {
    const session = agentSession(server, creds);
    const dispatcher = createApiDispatcher({ caPem: server.ca.certPem });
    try {
      const welcome = await session.start();
      assert.equal(welcome.version, 1);
      assert.equal(welcome.resumed, false);
      const http = Array.from({ length: 20 }, () =>
        fetchJson<{ ok: boolean }>(dispatcher, `https://127.0.0.1:${server.port}/healthz`),
      );
      let last = 0;
      for (let i = 0; i < 50; i++) last = await session.send(block(i));
      assert.deepEqual(
        await Promise.all(http),
        Array.from({ length: 20 }, () => ({ ok: true })),
      );
      await session.whenAcked(last);
      assert.equal(last, 50);
      assert.deepEqual(await session.have([Buffer.alloc(32, 1), Buffer.alloc(32, 2)]), [true, false]);
    } finally {
      await session.close();
      await dispatcher.close();
    }
  });

  void it("refuses a wire client without a client certificate, or with one from another CA", async () => {
    const none = await rawExchange(server.port, { ca: server.ca.certPem, bytes: [hello] });
    assert.ok(none.closed, "the connection is closed");
    assert.equal(none.messages.length, 1);
    assert.equal(none.messages[0]?.type, "ERROR");
    assert.equal((none.messages[0] as { code: string }).code, "NET_CLIENT_CERT_REQUIRED");

    const otherCa: CaCredentials = await createCa({ commonName: "Lifeboat CA wire test" });
    const stranger = await agentCredentials(otherCa, "srv-1");
    const foreign = await rawExchange(server.port, {
      ca: server.ca.certPem,
      creds: stranger,
      bytes: [hello],
    });
    assert.ok(foreign.closed);
    assert.deepEqual(
      foreign.messages.map((m) => (m as { code?: string }).code),
      ["NET_CLIENT_CERT_UNTRUSTED"],
    );
  });

  void it("closes connections that send malformed, oversized or corrupt frames, and keeps serving the others", async () => {
    const session = agentSession(server, creds);
    await session.start();
    try {
      const oversized = encodeFrame({ type: FrameType.PING, flags: 0, seq: 0, payload: Buffer.alloc(8) });
      oversized.writeUInt32BE(1 << 30, 16);
      const corrupt = encodeFrame({ ...encodeMessage(block(1)), flags: 0, seq: 1 });
      corrupt[corrupt.length - 100]! ^= 0x10;
      const gap = encodeFrame({ ...encodeMessage(block(1)), flags: 0, seq: 5 });
      const cases: [string, Buffer[], string][] = [
        ["garbage", [Buffer.from("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")], "WIRE_PROTOCOL"],
        ["an oversized frame", [oversized], "WIRE_FRAME_TOO_LARGE"],
        ["a bad checksum", [hello, corrupt], "WIRE_CHECKSUM"],
        [
          "BLOCKS before HELLO",
          [corrupt.subarray(0, 0), encodeFrame({ ...encodeMessage(block(1)), flags: 0, seq: 1 })],
          "WIRE_PROTOCOL",
        ],
        ["a gap in the sequence", [hello, gap], "WIRE_PROTOCOL"],
      ];
      // Another agent's certificate: a new stream from srv-1 would replace the session's (one stream per agent).
      const raw = await agentCredentials(server.ca, "srv-raw");
      for (const [what, bytes, code] of cases) {
        const r = await rawExchange(server.port, { ca: server.ca.certPem, creds: raw, bytes });
        assert.ok(r.closed, `${what}: closed`);
        const error = r.messages.find((m) => m.type === "ERROR") as { code: string } | undefined;
        assert.equal(error?.code, code, what);
      }
      // The session that behaved was not disturbed, nor was HTTP.
      const seq = await session.send(block(7));
      await session.whenAcked(seq);
      const dispatcher = createApiDispatcher({ caPem: server.ca.certPem });
      assert.deepEqual(await fetchJson(dispatcher, `https://127.0.0.1:${server.port}/healthz`), { ok: true });
      await dispatcher.close();
      assert.equal(session.connections, 1);
    } finally {
      await session.close();
    }
  });

  void it("ends a session whose versions the replicator does not speak, with a clear code", async () => {
    const session = agentSession(server, creds, { versions: [7, 8] });
    await assert.rejects(session.start(), (err) => {
      assert.ok(isLifeboatError(err, "WIRE_VERSION_UNSUPPORTED"));
      assert.match(err.message, /7, 8/);
      return true;
    });
    await assert.rejects(session.send(block(1)), (err) => isLifeboatError(err, "WIRE_VERSION_UNSUPPORTED"));
  });

  void it("connects with only the CA's pinned fingerprint, and refuses a wrong pin", async () => {
    const pin = certFingerprint(server.ca.certPem);
    const socket = await connectWire({ host: "127.0.0.1", port: server.port, caFingerprint: pin, ...creds });
    assert.equal(socket.alpnProtocol, WIRE_ALPN);
    assert.equal(socket.getProtocol(), "TLSv1.3");
    socket.destroy();
    const wrong = "AA".repeat(32);
    await assert.rejects(
      connectWire({ host: "127.0.0.1", port: server.port, caFingerprint: wrong, ...creds }),
      (err) => isLifeboatError(err, "NET_CA_MISMATCH"),
    );
  });
});
