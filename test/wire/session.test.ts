/**
 * The session layer over real TLS through a TCP proxy that cuts and freezes
 * connections: resume after a killed connection resends at most the window
 * and applies nothing twice; a half-open connection is found by heartbeats.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type LifeboatError, isLifeboatError } from "../../src/base/index.js";
import {
  type Command,
  FrameDecoder,
  type PointDone,
  type SequencedMessage,
  type ServerConnection,
  type Welcome,
  connectWire,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "../../src/wire/index.js";
import {
  type Credentials,
  DISK,
  type TestProxy,
  type TestWireServer,
  agentCredentials,
  agentSession,
  startProxy,
  startWireServer,
} from "./fixtures.js";

const WINDOW = { frames: 16, bytes: 2 << 20 };

function block(i: number): SequencedMessage {
  const data = Buffer.alloc(DISK.blockSize, i % 251);
  data.writeUInt32BE(i, 0);
  return {
    type: "BLOCKS",
    disk: 0,
    offset: (i % 1024) * DISK.blockSize,
    kind: "blocks",
    blocks: [{ encoding: "raw", sha256: createHash("sha256").update(data).digest(), data }],
  };
}

/** What a replicator applied, per agent: sequence numbers and the first four bytes of each block. */
class Applied {
  seqs: number[] = [];
  marks: number[] = [];
  delay = 0;
  closes: LifeboatError[] = [];
  handlers = () => ({
    apply: async (msg: SequencedMessage, seq: number) => {
      if (this.delay) await sleep(this.delay);
      else await new Promise((r) => setImmediate(r));
      assert.equal(seq, this.seqs.length + 1, `seq ${seq} applied after ${this.seqs.length}`);
      this.seqs.push(seq);
      this.marks.push(
        msg.type === "BLOCKS" && msg.kind === "blocks" ? msg.blocks[0]!.data.readUInt32BE(0) : -1,
      );
    },
    onClose: (err: LifeboatError) => void this.closes.push(err),
  });
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

void describe("wire sessions across broken connections", () => {
  const applied = new Applied();
  let server: TestWireServer;
  let proxy: TestProxy;
  let creds: Credentials;

  before(async () => {
    server = await startWireServer({
      handlers: () => applied.handlers(),
      window: WINDOW,
      heartbeat: { intervalMs: 40, misses: 3 },
    });
    proxy = await startProxy(server.port);
    creds = await agentCredentials(server.ca, "srv-1");
  });
  after(async () => {
    await proxy.close();
    await server.close();
  });

  void it("resumes after killed connections: at most the window resent each time, nothing applied twice", async () => {
    applied.seqs = [];
    applied.marks = [];
    applied.delay = 1;
    const resentPerConnection: number[] = [];
    const welcomes: Welcome[] = [];
    let resentBefore = 0;
    const session = agentSession(server, creds, {
      port: proxy.port,
      onWelcome: (w) => {
        welcomes.push(w);
        // attach() has just resent the window: count this connection's share.
        const total = session.resent.frames;
        resentPerConnection.push(total - resentBefore);
        resentBefore = total;
      },
    });
    try {
      await session.start();
      const N = 400;
      const cuts = [60, 150, 151, 300];
      let last = 0;
      for (let i = 1; i <= N; i++) {
        last = await session.send(block(i));
        if (cuts.includes(i)) {
          assert.ok(session.inFlight.frames > 0, "something in flight when the connection is cut");
          proxy.cut();
        }
      }
      await session.whenAcked(last);
      assert.equal(last, N);
      assert.deepEqual(
        applied.seqs,
        Array.from({ length: N }, (_, i) => i + 1),
        "each seq once, in order",
      );
      assert.deepEqual(
        applied.marks,
        Array.from({ length: N }, (_, i) => i + 1),
        "each seq with its own block",
      );
      assert.ok(welcomes.length >= 2, `reconnected (${welcomes.length} handshakes)`);
      assert.ok(
        welcomes.slice(1).every((w) => w.resumed),
        "every reconnect resumed the stream",
      );
      assert.ok(session.resent.frames > 0, "the cut lost frames in flight, which were sent again");
      for (const n of resentPerConnection)
        assert.ok(n <= WINDOW.frames, `resent ${n} > window ${WINDOW.frames}`);
    } finally {
      await session.close();
    }
  });

  void it("finds a half-open connection by heartbeats on the agent's side, and resumes on a new one", async () => {
    applied.seqs = [];
    applied.delay = 0;
    const disconnects: LifeboatError[] = [];
    const session = agentSession(server, creds, {
      port: proxy.port,
      onDisconnect: (e) => void disconnects.push(e),
    });
    try {
      await session.start();
      const s1 = await session.send(block(1));
      await session.whenAcked(s1);
      const before = proxy.accepted;
      const frozenAt = Date.now();
      proxy.freeze();
      const s2 = await session.send(block(2));
      await until("the agent to give up on the frozen connection", () => disconnects.length > 0, 3000);
      const detectedMs = Date.now() - frozenAt;
      assert.ok(isLifeboatError(disconnects[0], "WIRE_PEER_DEAD"), String(disconnects[0]?.code));
      // 3 silent intervals of 40 ms, measured loosely: far below any TCP timeout that would otherwise apply.
      assert.ok(detectedMs < 2000, `detected after ${detectedMs} ms`);
      await session.whenAcked(s2);
      assert.ok(proxy.accepted > before, "a new connection was made");
      assert.deepEqual(applied.seqs, [1, 2]);
    } finally {
      await session.close();
      proxy.cut();
    }
  });

  void it("drops an agent that stops answering after the handshake (the replicator's side)", async () => {
    applied.closes = [];
    const silent = await agentCredentials(server.ca, "srv-silent");
    const socket = await connectWire({
      host: "127.0.0.1",
      port: server.port,
      caPem: server.ca.certPem,
      ...silent,
    });
    try {
      const decoder = new FrameDecoder();
      const got: string[] = [];
      // Read (so TCP stays open) but never answer a PING.
      socket.on("data", (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          const m = decodeMessage(f.type, f.payload);
          got.push(m.type === "ERROR" ? `ERROR ${m.code}` : m.type);
        }
      });
      const hello = encodeMessage({
        type: "HELLO",
        versions: [1],
        agent: { serverId: "srv-silent", hostname: "x", version: "t" },
        disks: [DISK],
      });
      socket.write(encodeFrame({ ...hello, flags: 0, seq: 0 }));
      await until(
        "the replicator to declare the agent dead",
        () => applied.closes.some((e) => isLifeboatError(e, "WIRE_PEER_DEAD")),
        3000,
      );
      assert.equal(got[0], "WELCOME");
      assert.ok(got.includes("PING"), "the replicator pinged");
      await until("the ERROR frame", () => got.includes("ERROR WIRE_PEER_DEAD"), 1000);
    } finally {
      socket.destroy();
    }
  });

  void it("carries commands and PIT completions to the agent, and answers have-queries", async () => {
    const commands: Command[] = [];
    const done: PointDone[] = [];
    let conn: ServerConnection | undefined;
    const local = await startWireServer({
      ca: server.ca,
      handlers: (_peer, connection) => {
        conn = connection;
        return {
          apply: () => Promise.resolve(),
          have: (hashes) => Promise.resolve(hashes.map((_, i) => i % 2 === 0)),
        };
      },
    });
    const session = agentSession(local, creds, {
      onCommand: (c) => void commands.push(c),
      onPointDone: (d) => void done.push(d),
    });
    try {
      await session.start();
      const seq = await session.send({
        type: "POINT",
        pointId: "pit-now",
        consistency: "filesystem",
        takenAt: Date.now(),
        disks: [{ index: 0, sizeBytes: DISK.sizeBytes }],
      });
      await session.whenAcked(seq);
      conn!.command({ id: 1, command: "make-pit", consistency: "filesystem" });
      conn!.command({ id: 2, command: "set-bandwidth", mbps: 200 });
      conn!.pointDone({ pointId: "pit-now", seq, pitId: "0123456789abcdef01234567" });
      await until("commands", () => commands.length === 2 && done.length === 1);
      assert.deepEqual(
        commands.map((c) => c.command),
        ["make-pit", "set-bandwidth"],
      );
      assert.equal(done[0]?.seq, seq);
      const hashes = Array.from({ length: 5 }, (_, i) => Buffer.alloc(32, i));
      assert.deepEqual(await session.have(hashes), [true, false, true, false, true]);
    } finally {
      await session.close();
      await local.close();
    }
  });

  void it("asks have-queries only once the handshake is done; before, have() says not connected", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const local = await startWireServer({
      ca: server.ca,
      handlers: async () => {
        await gate; // the replicator still opening the replica: no WELCOME yet
        return { apply: () => Promise.resolve(), have: (hashes) => Promise.resolve(hashes.map(() => true)) };
      },
    });
    const session = agentSession(local, creds);
    try {
      const started = session.start();
      await sleep(200);
      await assert.rejects(
        session.have([Buffer.alloc(32)]),
        (err) => isLifeboatError(err) && err.code === "WIRE_CONNECTION_CLOSED",
      );
      release();
      await started;
      assert.deepEqual(await session.have([Buffer.alloc(32, 1)]), [true]);
      assert.equal(session.connections, 1, "no protocol error tore the connection down");
    } finally {
      await session.close();
      await local.close();
    }
  });
});
