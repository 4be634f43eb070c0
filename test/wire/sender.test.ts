import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { LifeboatError, isLifeboatError, systemClock } from "../../src/base/index.js";
import {
  FLAG_RESENT,
  FrameChannel,
  FrameDecoder,
  type OutgoingFrame,
  ReliableSender,
  type SequencedMessage,
  decodeMessage,
  encodeMessage,
} from "../../src/wire/index.js";
import { randomBlocks } from "./fixtures.js";

function point(n: number, pad = 0): SequencedMessage {
  return {
    type: "POINT",
    pointId: `p${n}${"x".repeat(pad)}`.slice(0, 64),
    consistency: "none",
    takenAt: n,
    disks: [{ index: 0, sizeBytes: 1 }],
  };
}

/** A channel over a socket that keeps a copy of every write as it was at write time, one entry per write. */
function recordingChannel(): { writes: Buffer[]; channel: FrameChannel } {
  const writes: Buffer[] = [];
  const socket = new Writable({
    write(chunk: Buffer, _enc, done) {
      writes.push(Buffer.from(chunk));
      done();
    },
  });
  const channel = new FrameChannel(socket as never, "agent", { onMessage() {}, onClose() {} }, systemClock, {
    intervalMs: 60_000,
    misses: 3,
  });
  return { writes, channel };
}

/** A sender of up to `frames` frames (64 MiB) in flight, writing to `channel`, and the frames it wrote. */
function attachedSender(channel: FrameChannel, frames: number): { s: ReliableSender; kept: OutgoingFrame[] } {
  const s = new ReliableSender({ frames, bytes: 64 << 20 });
  const kept: OutgoingFrame[] = [];
  s.attach((f, resent) => {
    kept.push(f);
    channel.sendSequenced(f, resent);
  }, 0);
  return { s, kept };
}

/** Lets queued continuations run. */
const settle = () => new Promise((r) => setImmediate(r));

void describe("reliable sender", () => {
  void it("makes send wait while the window is full, and lets waiters in in call order as ACKs arrive", async () => {
    const s = new ReliableSender({ frames: 3, bytes: 1 << 20 });
    const written: number[] = [];
    s.attach((f) => void written.push(f.seq), 0);
    assert.deepEqual(await Promise.all([s.send(point(1)), s.send(point(2)), s.send(point(3))]), [1, 2, 3]);
    const order: number[] = [];
    const fourth = s.send(point(4)).then((seq) => order.push(seq));
    const fifth = s.send(point(5)).then((seq) => order.push(seq));
    await settle();
    assert.deepEqual(order, [], "no room: both wait");
    assert.deepEqual(written, [1, 2, 3]);
    s.ack(1);
    await settle();
    assert.deepEqual(order, [4], "one slot: the first waiter");
    s.ack(3);
    await Promise.all([fourth, fifth]);
    assert.deepEqual(order, [4, 5]);
    assert.deepEqual(written, [1, 2, 3, 4, 5]);
    assert.deepEqual(s.inFlight.frames, 2);
  });

  void it("bounds bytes too, and lets a message larger than the window through alone", async () => {
    const size = encodeMessage(point(1)).payload.length;
    const s = new ReliableSender({ frames: 100, bytes: 2 * size + 1 });
    s.attach(() => {}, 0);
    await s.send(point(1));
    await s.send(point(2));
    assert.equal(s.inFlight.bytes, 2 * size);
    let third = false;
    const p3 = s.send(point(3)).then(() => (third = true));
    await settle();
    assert.equal(third, false, "waits: a third would exceed the window's bytes");
    s.ack(1);
    await p3;
    const big = new ReliableSender({ frames: 10, bytes: 10 });
    big.attach(() => {}, 0);
    assert.equal(await big.send(point(1)), 1, "alone in an empty window");
    let second = false;
    const p = big.send(point(2)).then(() => (second = true));
    await settle();
    assert.equal(second, false);
    big.ack(1);
    await p;
  });

  void it("resends only what follows the receiver's last ACK on a new connection, flagged as resent", async () => {
    const s = new ReliableSender({ frames: 10, bytes: 1 << 20 });
    s.attach(() => {}, 0);
    for (let i = 1; i <= 6; i++) await s.send(point(i));
    s.ack(2);
    s.detach();
    await s.send(point(7)); // kept while disconnected
    const again: [number, boolean][] = [];
    s.attach((f: OutgoingFrame, resent) => void again.push([f.seq, resent]), 4);
    assert.deepEqual(again, [
      [5, true],
      [6, true],
      [7, true],
    ]);
    assert.equal(s.lastAcked, 4);
    assert.deepEqual(s.inFlight.frames, 3);
    assert.throws(
      () => s.attach(() => {}, 3),
      (e) => isLifeboatError(e, "WIRE_PROTOCOL"),
      "going back is refused",
    );
  });

  void it("renumbers kept frames for a stream the receiver does not know", async () => {
    const s = new ReliableSender({ frames: 10, bytes: 1 << 20 });
    s.attach(() => {}, 0);
    for (let i = 1; i <= 5; i++) await s.send(point(i));
    s.ack(3);
    const waiting = s.whenAcked(5);
    s.detach();
    s.restart();
    await assert.rejects(waiting, (e) => isLifeboatError(e, "WIRE_STREAM_RESET"));
    const seqs: number[] = [];
    s.attach((f) => void seqs.push(f.seq), 0);
    assert.deepEqual(seqs, [1, 2]);
    assert.equal(await s.send(point(6)), 3);
  });

  void it("refuses an ACK beyond what was sent, and fails waiters on close", async () => {
    const s = new ReliableSender({ frames: 1, bytes: 1 << 20 });
    s.attach(() => {}, 0);
    await s.send(point(1));
    assert.throws(
      () => s.ack(2),
      (e) => isLifeboatError(e, "WIRE_PROTOCOL"),
    );
    s.ack(0); // stale, ignored
    const blocked = s.send(point(2));
    const acked = s.whenAcked(1);
    s.close(new LifeboatError("WIRE_SESSION_CLOSED", "closed"));
    await assert.rejects(blocked, (e) => isLifeboatError(e, "WIRE_SESSION_CLOSED"));
    await assert.rejects(acked, (e) => isLifeboatError(e, "WIRE_SESSION_CLOSED"));
    await assert.rejects(s.send(point(3)), (e) => isLifeboatError(e, "WIRE_SESSION_CLOSED"));
  });

  void it("sends large frames from payloads it takes back once acknowledged, header and payload in one write", async () => {
    const { writes, channel } = recordingChannel();
    const blocks = (first: number) => randomBlocks(first, 8);
    /** Decodes one socket write: exactly one frame, whose message must equal `msg`. */
    const check = (write: Buffer, msg: SequencedMessage, seq: number, flags = 0) => {
      const frames = new FrameDecoder().push(write);
      assert.equal(frames.length, 1, "one frame per write");
      assert.equal(frames[0]!.seq, seq);
      assert.equal(frames[0]!.flags, flags);
      assert.deepEqual(decodeMessage(frames[0]!.type, frames[0]!.payload), msg);
    };
    const { s, kept } = attachedSender(channel, 10);
    const sent = [blocks(0), blocks(8), blocks(16)];
    for (const m of sent) await s.send(m);
    await new Promise((r) => setImmediate(r));
    assert.equal(writes.length, 3);
    sent.forEach((m, i) => check(writes[i]!, m, i + 1));
    assert.ok(kept.every((f) => f.headroom));
    const buffers = kept.map((f) => f.payload.buffer);
    assert.equal(new Set(buffers).size, 3, "three frames in flight, three buffers");

    s.ack(1);
    const fourth = blocks(24);
    await s.send(fourth);
    assert.equal(kept[3]!.payload.buffer, buffers[0], "the acknowledged frame's buffer is reused");
    for (const [i, f] of kept.slice(1, 3).entries())
      assert.deepEqual(
        decodeMessage(f.type, f.payload),
        sent[i + 1],
        `frame ${i + 2}, not acknowledged, still holds its bytes`,
      );

    // A new connection: the kept frames go out again, flagged as resent, still one write each.
    writes.length = 0;
    s.detach();
    s.attach((f, resent) => channel.sendSequenced(f, resent), 1);
    await new Promise((r) => setImmediate(r));
    assert.equal(writes.length, 3);
    [sent[1]!, sent[2]!, fourth].forEach((m, i) => check(writes[i]!, m, i + 2, FLAG_RESENT));
    channel.close(new LifeboatError("WIRE_SESSION_CLOSED", "done"));
  });

  void it("sends small frames from shared blocks, each keeping its bytes until acknowledged", async () => {
    const { writes, channel } = recordingChannel();
    const { s, kept } = attachedSender(channel, 1000);
    // One block of 64 KiB a frame: well under the pool's size, so from the arena's blocks of a MiB.
    const sent = Array.from({ length: 40 }, (_, i) => randomBlocks(i, 1));
    for (const m of sent.slice(0, 20)) await s.send(m);
    await settle();
    assert.ok(
      kept.every((f) => f.headroom),
      "the header goes in front of each payload",
    );
    assert.ok(new Set(kept.map((f) => f.payload.buffer)).size < 5, "twenty frames in a few blocks");
    // The first 15 come back; the next 20 are carved while frames 16-20 are still out.
    s.ack(15);
    for (const m of sent.slice(20)) await s.send(m);
    await settle();
    kept.forEach((f, i) => {
      if (i < 15) return;
      const frames = new FrameDecoder().push(writes[i]!);
      assert.equal(frames.length, 1, "one frame per write");
      assert.deepEqual(
        decodeMessage(frames[0]!.type, frames[0]!.payload),
        sent[i],
        `frame ${i + 1} as written`,
      );
      assert.deepEqual(
        decodeMessage(f.type, f.payload),
        sent[i],
        `frame ${i + 1}, kept, still holds its bytes`,
      );
    });
    channel.close(new LifeboatError("WIRE_SESSION_CLOSED", "done"));
  });
});
