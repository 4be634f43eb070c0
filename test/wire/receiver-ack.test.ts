import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReliableReceiver, type SequencedMessage } from "../../src/wire/index.js";

const msg = {
  type: "POINT",
  pointId: "p",
  consistency: "crash",
  takenAt: 0,
  disks: [],
} as unknown as SequencedMessage;

const turn = () => new Promise((resolve) => setImmediate(resolve));

void describe("receiver ACKs", () => {
  void it("acknowledge what a checkpoint made durable at once, while later frames still wait", async () => {
    // A pipelined application that makes messages durable in batches, as the replicator's checkpoints do.
    const durable: (() => void)[] = [];
    const receiver = new ReliableReceiver(
      () => new Promise<void>((resolve) => durable.push(resolve)),
      { frames: 4096, bytes: 64 << 20 },
      { pipelined: true },
    );
    const acks: number[] = [];
    receiver.attach({ ack: (seq) => acks.push(seq), fail: (err) => assert.fail(String(err)) });
    for (let seq = 1; seq <= 600; seq++) receiver.accept(seq, msg, 4096);
    await turn();
    assert.deepEqual(acks, [], "nothing is durable yet");

    // A checkpoint covers the first 300: they are acknowledged in one ACK, though 300 frames wait.
    for (const resolve of durable.splice(0, 300)) resolve();
    await turn();
    await turn();
    assert.deepEqual(acks, [300]);
    assert.equal(receiver.lastApplied, 300);

    // Frames keep coming; the next checkpoint covers up to 550.
    for (let seq = 601; seq <= 700; seq++) receiver.accept(seq, msg, 4096);
    for (const resolve of durable.splice(0, 250)) resolve();
    await turn();
    await turn();
    assert.deepEqual(acks, [300, 550]);

    // The last ones: the queue runs empty, and the ACK says so.
    for (const resolve of durable.splice(0)) resolve();
    await turn();
    await turn();
    assert.deepEqual(acks, [300, 550, 700]);
  });

  void it("send no ACK after the connection is gone", async () => {
    const durable: (() => void)[] = [];
    const receiver = new ReliableReceiver(
      () => new Promise<void>((resolve) => durable.push(resolve)),
      { frames: 64, bytes: 1 << 20 },
      { pipelined: true },
    );
    const acks: number[] = [];
    const conn = { ack: (seq: number) => acks.push(seq), fail: () => undefined };
    receiver.attach(conn);
    for (let seq = 1; seq <= 10; seq++) receiver.accept(seq, msg, 100);
    for (const resolve of durable.splice(0, 4)) resolve();
    receiver.detach(conn);
    await turn();
    await turn();
    assert.deepEqual(acks, []);
  });
});
