/**
 * The receiver fuzz: a scenario of frames replayed, reordered, duplicated,
 * corrupted, cut short and interleaved with garbage and reconnects is fed
 * through the replicator's path for sequenced frames (FrameDecoder →
 * decodeMessage → checkBlocks → ReliableReceiver), with applications that take
 * varying time. After every step: nothing applied twice or out of order,
 * every applied message is the one sent under its number, the receiver's
 * queue within its window, the decoder within one frame; every ACK covers only
 * what was applied. At the end a well-behaved sender finishes the stream, and
 * exactly 1..N must have been applied.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fc from "fast-check";
import { LifeboatError, isLifeboatError } from "../../src/base/index.js";
import {
  type DiskInfo,
  FrameDecoder,
  MAX_FRAME_BYTES,
  ReliableReceiver,
  type SequencedMessage,
  checkBlocks,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "../../src/wire/index.js";
import { canon } from "./arbitraries.js";

const N = 12;
const WINDOW = { frames: 4, bytes: 600 };
const DISKS: DiskInfo[] = [{ index: 0, id: "vda", sizeBytes: 1 << 20, blockSize: 4096 }];

function truth(seq: number): SequencedMessage {
  const sha256 = createHash("sha256").update(`block ${seq}`).digest();
  if (seq % 4 === 0) {
    return {
      type: "POINT",
      pointId: `p${seq}`,
      consistency: "crash",
      takenAt: seq,
      disks: [{ index: 0, sizeBytes: 1 << 20 }],
    };
  }
  if (seq % 4 === 1) {
    return {
      type: "BLOCKS",
      disk: 0,
      offset: seq * 4096,
      kind: "patch",
      sha256,
      patches: [{ at: seq, data: Buffer.alloc(seq * 3, seq) }],
    };
  }
  return {
    type: "BLOCKS",
    disk: 0,
    offset: seq * 4096,
    kind: "blocks",
    blocks: [{ encoding: "zero", sha256, data: Buffer.alloc(0) }],
  };
}

const FRAMES = Array.from({ length: N + 1 }, (_, seq) => {
  if (seq === 0) return Buffer.alloc(0);
  const { type, payload } = encodeMessage(truth(seq));
  return encodeFrame({ type, flags: 0, seq, payload });
});

export type Step =
  | { kind: "frame"; seq: number }
  | { kind: "burst"; count: number }
  | { kind: "garbage"; bytes: Uint8Array }
  | { kind: "corrupt"; seq: number; pos: number; bit: number }
  | { kind: "partial"; seq: number; keep: number }
  | { kind: "ack-frame" }
  | { kind: "reconnect" }
  | { kind: "wait"; ticks: number }
  | { kind: "settle" };

const seqArb = fc.integer({ min: 1, max: N });
export const scenario = fc.record({
  steps: fc.array(
    fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant("frame" as const), seq: seqArb }) },
      {
        weight: 3,
        arbitrary: fc.record({ kind: fc.constant("burst" as const), count: fc.integer({ min: 1, max: 6 }) }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("garbage" as const),
          bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("corrupt" as const),
          seq: seqArb,
          pos: fc.nat(),
          bit: fc.integer({ min: 0, max: 7 }),
        }),
      },
      {
        weight: 1,
        arbitrary: fc.record({ kind: fc.constant("partial" as const), seq: seqArb, keep: fc.nat() }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("ack-frame" as const) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("reconnect" as const) }) },
      {
        weight: 2,
        arbitrary: fc.record({ kind: fc.constant("wait" as const), ticks: fc.integer({ min: 0, max: 6 }) }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("settle" as const) }) },
    ),
    { maxLength: 40 },
  ),
  /** Microtask turns each application takes, by seq. */
  delays: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: N + 1, maxLength: N + 1 }),
});

const ticks = async (n: number) => {
  for (let i = 0; i < n; i++) await Promise.resolve();
};

export async function runScenario(s: { steps: Step[]; delays: number[] }): Promise<{ errors: number }> {
  const applied: number[] = [];
  const receiver = new ReliableReceiver(async (msg, seq) => {
    await ticks(s.delays[seq] ?? 0);
    assert.equal(seq, applied.length + 1, `applied ${seq} after ${applied.length}`);
    assert.equal(canon(msg), canon(truth(seq)), `seq ${seq} applied with other content`);
    applied.push(seq);
  }, WINDOW);
  let acked = 0;
  let decoder = new FrameDecoder();
  let conn: { ack(seq: number): void; fail(err: unknown): void } | undefined;
  let errors = 0;

  const connect = async () => {
    await receiver.idle();
    decoder = new FrameDecoder();
    const c = {
      ack: (seq: number) => {
        assert.ok(seq <= receiver.lastApplied, `ACK ${seq} beyond applied ${receiver.lastApplied}`);
        assert.ok(conn === c, "ACK on a closed connection");
        acked = Math.max(acked, seq);
      },
      fail: (err: unknown) => {
        throw err;
      },
    };
    conn = c;
    receiver.attach(c);
  };
  const drop = () => {
    receiver.detach(conn);
    conn = undefined;
  };
  const feed = (bytes: Buffer) => {
    try {
      for (const f of decoder.push(bytes)) {
        const msg = decodeMessage(f.type, f.payload);
        if (msg.type !== "BLOCKS" && msg.type !== "POINT") {
          // The channel's direction check: the replicator never receives an ACK.
          throw new LifeboatError("WIRE_PROTOCOL", `unexpected ${msg.type}`);
        }
        if (msg.type === "BLOCKS") checkBlocks(msg, DISKS);
        receiver.accept(f.seq, msg, f.payload.length);
      }
    } catch (err) {
      if (!isLifeboatError(err) || !err.code.startsWith("WIRE_")) throw err;
      errors++;
      drop();
    }
  };

  await connect();
  for (const step of s.steps) {
    if (!conn) await connect();
    switch (step.kind) {
      case "frame":
        feed(FRAMES[step.seq]!);
        break;
      case "burst": {
        // What a correct sender does after a reconnect: everything after the last ACK, in order.
        const from = acked + 1;
        for (let q = from; q < from + step.count && q <= N && conn; q++) feed(FRAMES[q]!);
        break;
      }
      case "garbage":
        feed(Buffer.from(step.bytes));
        break;
      case "corrupt": {
        const b = Buffer.from(FRAMES[step.seq]!);
        b[step.pos % b.length]! ^= 1 << step.bit;
        feed(b);
        break;
      }
      case "partial": {
        const f = FRAMES[step.seq]!;
        feed(f.subarray(0, step.keep % f.length));
        break;
      }
      case "ack-frame":
        // A frame the replicator never receives.
        feed(encodeFrame({ ...encodeMessage({ type: "ACK", seq: 1 }), flags: 0, seq: 0 }));
        break;
      case "reconnect":
        drop();
        break;
      case "wait":
        await ticks(step.ticks);
        break;
      case "settle":
        await receiver.idle();
        break;
    }
    assert.ok(
      receiver.backlog.frames <= WINDOW.frames && receiver.backlog.bytes <= WINDOW.bytes,
      "queue beyond the window",
    );
    assert.ok(decoder.bufferedBytes <= MAX_FRAME_BYTES);
  }
  // A well-behaved sender finishes: reconnect, send the window after the last ACK, wait for ACKs, repeat.
  drop();
  for (let round = 0; receiver.lastApplied < N; round++) {
    assert.ok(round < 2 * N, "the stream does not finish");
    await connect();
    const from = receiver.lastApplied + 1;
    for (let q = from; q < from + WINDOW.frames && q <= N; q++) {
      if (receiver.backlog.bytes + FRAMES[q]!.length > WINDOW.bytes) break;
      feed(FRAMES[q]!);
    }
    await receiver.idle();
    drop();
  }
  assert.deepEqual(
    applied,
    Array.from({ length: N }, (_, i) => i + 1),
  );
  return { errors };
}
