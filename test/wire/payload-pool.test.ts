/**
 * Large frame payloads come from a pool and go back only once their message
 * is durable: a payload reused earlier would change the bytes of a message
 * still being applied. Checked on the decoder alone and through a real
 * WireServer over TLS, whose socket reads cut every large frame.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  FrameDecoder,
  PayloadPool,
  type SequencedMessage,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "../../src/wire/index.js";
import {
  type Credentials,
  type TestWireServer,
  agentCredentials,
  agentSession,
  randomBlocks as blocks,
  startWireServer,
} from "./fixtures.js";

/** The message's bytes as received, copied: what it must still hold until it is durable. */
function snapshot(msg: SequencedMessage): Buffer {
  assert.ok(msg.type === "BLOCKS" && msg.kind === "blocks");
  return Buffer.concat(msg.blocks.flatMap((b) => [b.sha256, b.data]));
}

function payloadOf(msg: SequencedMessage): ArrayBufferLike {
  assert.ok(msg.type === "BLOCKS" && msg.kind === "blocks");
  return msg.blocks[0]!.data.buffer;
}

/** Feeds a frame to the decoder in 16 KiB pieces, as a TLS socket delivers it. */
function decodePieces(d: FrameDecoder, msg: SequencedMessage, seq: number): SequencedMessage {
  const { type, payload } = encodeMessage(msg);
  const bytes = encodeFrame({ type, flags: 0, seq, payload });
  const frames = [];
  for (let at = 0; at < bytes.length; at += 16384) frames.push(...d.push(bytes.subarray(at, at + 16384)));
  assert.equal(frames.length, 1);
  return decodeMessage(frames[0]!.type, frames[0]!.payload) as SequencedMessage;
}

void describe("payload pool", () => {
  void it("lends large payloads, takes each back once, and leaves small ones alone", () => {
    const pool = new PayloadPool(64 << 20);
    const d = new FrameDecoder(pool);
    const sent1 = blocks(0, 8);
    const m1 = decodePieces(d, sent1, 1);
    assert.ok(snapshot(m1).equals(snapshot(sent1)));
    const m2 = decodePieces(d, blocks(8, 8), 2);
    assert.notEqual(payloadOf(m2), payloadOf(m1), "a payload lent out is not lent again");
    assert.ok(snapshot(m1).equals(snapshot(sent1)), "the first message is intact after the second");

    pool.giveBack(m1);
    pool.giveBack(m1); // twice: ignored
    const m3 = decodePieces(d, blocks(16, 8), 3);
    assert.equal(payloadOf(m3), payloadOf(m1), "a payload given back is reused");
    const m4 = decodePieces(d, blocks(24, 8), 4);
    assert.notEqual(payloadOf(m4), payloadOf(m3), "a buffer given back twice is still lent only once");

    const small = decodePieces(d, blocks(32, 1), 5);
    pool.giveBack(small);
    const again = decodePieces(d, blocks(33, 1), 6);
    assert.notEqual(payloadOf(again), payloadOf(small), "small payloads are not pooled");
  });

  void describe("in a wire server", () => {
    let server: TestWireServer;
    let creds: Credentials;
    const got: { msg: SequencedMessage; copy: Buffer; durable: () => void }[] = [];

    before(async () => {
      server = await startWireServer({
        handlers: () => ({
          pipelined: true,
          apply: (msg) =>
            new Promise<void>((resolve) => got.push({ msg, copy: snapshot(msg), durable: resolve })),
        }),
        window: { frames: 64, bytes: 16 << 20 },
      });
      creds = await agentCredentials(server.ca, "srv-1");
    });
    after(async () => {
      await server.close();
    });

    async function until(n: number): Promise<void> {
      for (let i = 0; i < 500 && got.length < n; i++) await sleep(10);
      assert.equal(got.length, n, `${n} messages applied`);
    }

    void it("reuses a payload only after its message is durable", async () => {
      const session = agentSession(server, creds);
      try {
        await session.start();
        for (let i = 0; i < 6; i++) await session.send(blocks(i * 8, 8));
        await until(6);
        const buffers = got.map((g) => payloadOf(g.msg));
        assert.equal(new Set(buffers).size, 6, "six messages in flight, six payloads");

        for (const g of got.slice(0, 3)) g.durable();
        await session.whenAcked(3);
        for (let i = 6; i < 9; i++) await session.send(blocks(i * 8, 8));
        await until(9);
        const reused = got.slice(6).map((g) => payloadOf(g.msg));
        assert.ok(
          reused.every((b) => buffers.slice(0, 3).includes(b)),
          "the new messages reuse the payloads of the durable ones",
        );
        // Messages 4 to 9 are not durable yet: each still holds the bytes it arrived with. (The
        // first three are durable, and their payloads now hold messages 7 to 9.)
        for (const [i, g] of got.entries()) {
          if (i < 3) continue;
          assert.ok(snapshot(g.msg).equals(g.copy), `message ${i + 1} holds the bytes it arrived with`);
        }
        for (const g of got.slice(3)) g.durable();
        await session.whenAcked(9);
      } finally {
        await session.close();
      }
    });
  });
});
