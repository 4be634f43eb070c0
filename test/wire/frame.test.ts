import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isLifeboatError } from "../../src/base/index.js";
import {
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  MAX_FRAME_BYTES,
  MAX_PAYLOAD,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  type Frame,
} from "../../src/wire/index.js";
import { anyMessage, canon, check } from "./arbitraries.js";

function frameOf(msg: Parameters<typeof encodeMessage>[0], seq = 0): Buffer {
  const { type, payload } = encodeMessage(msg);
  return encodeFrame({ type, flags: 0, seq, payload });
}

/** Cuts `bytes` at the given points (sorted, deduplicated, inside). */
function cut(bytes: Buffer, points: number[]): Buffer[] {
  const at = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...at, bytes.length]) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  return out;
}

function decodeAll(chunks: Buffer[]): { frames: Frame[]; maxBuffered: number } {
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  let maxBuffered = 0;
  for (const c of chunks) {
    frames.push(...d.push(c));
    maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
  }
  assert.equal(d.bufferedBytes, 0, "nothing left over after whole frames");
  return { frames, maxBuffered };
}

function thrownCode(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isLifeboatError(err)) return err.code;
    throw err;
  }
  return "none";
}

void describe("frames", () => {
  void it("decode to the messages encoded, however the stream is cut", () =>
    check(
      fc.property(
        fc.array(anyMessage, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 40 }),
        (msgs, points) => {
          const withSeq = msgs.map((m, i) => ({
            m,
            seq: m.type === "BLOCKS" || m.type === "POINT" ? i + 1 : 0,
          }));
          const stream = Buffer.concat(withSeq.map(({ m, seq }) => frameOf(m, seq)));
          const { frames } = decodeAll(cut(stream, points));
          assert.equal(frames.length, msgs.length);
          frames.forEach((f, i) => {
            assert.equal(f.seq, withSeq[i]!.seq);
            assert.equal(canon(decodeMessage(f.type, f.payload)), canon(msgs[i]));
          });
        },
      ),
      300,
    ));

  void it("never buffers more than the frame in progress, even byte by byte", () => {
    const big = Buffer.alloc(MAX_PAYLOAD[FrameType.BLOCKS], 7);
    const frame = encodeFrame({ type: FrameType.BLOCKS, flags: 0, seq: 1, payload: big });
    const d = new FrameDecoder();
    let max = 0;
    for (let at = 0; at < frame.length; at += 4093) {
      const out = d.push(frame.subarray(at, Math.min(frame.length, at + 4093)));
      max = Math.max(max, d.bufferedBytes);
      if (at + 4093 >= frame.length) assert.equal(out.length, 1);
    }
    assert.ok(max <= frame.length && frame.length <= MAX_FRAME_BYTES);
    const tiny = frameOf({ type: "PING", nonce: 5 });
    const one = new FrameDecoder();
    const frames = [...tiny].flatMap((b) => one.push(Buffer.from([b])));
    assert.equal(frames.length, 1);
  });

  void it("refuses a header announcing more than its type's limit before reading the payload", () => {
    const header = encodeFrame({ type: FrameType.ACK, flags: 0, seq: 0, payload: Buffer.alloc(8) });
    header.writeUInt32BE(MAX_PAYLOAD[FrameType.ACK] + 1, 16);
    const d = new FrameDecoder();
    assert.equal(
      thrownCode(() => d.push(header.subarray(0, HEADER_BYTES))),
      "WIRE_FRAME_TOO_LARGE",
    );
    assert.ok(d.bufferedBytes <= HEADER_BYTES, "no payload buffer was allocated");
    // Spent: later input is refused with the same error.
    assert.equal(
      thrownCode(() => d.push(Buffer.alloc(1))),
      "WIRE_FRAME_TOO_LARGE",
    );
    const huge = encodeFrame({ type: FrameType.BLOCKS, flags: 0, seq: 1, payload: Buffer.alloc(0) });
    huge.writeUInt32BE(0xffffffff, 16);
    assert.equal(
      thrownCode(() => new FrameDecoder().push(huge)),
      "WIRE_FRAME_TOO_LARGE",
    );
  });

  void it("refuses malformed headers with WIRE_PROTOCOL", () => {
    const good = frameOf({ type: "ACK", seq: 3 });
    const variants: [string, (b: Buffer) => void][] = [
      ["bad magic", (b) => b.writeUInt16BE(0x4854, 0)],
      ["unknown format", (b) => b.writeUInt8(2, 2)],
      ["unknown type", (b) => b.writeUInt8(99, 3)],
      ["unknown flag", (b) => b.writeUInt16BE(0x8000, 4)],
      ["reserved bits", (b) => b.writeUInt16BE(1, 6)],
      ["seq on an unsequenced type", (b) => b.writeBigUInt64BE(5n, 8)],
      ["seq beyond 2^53", (b) => b.writeBigUInt64BE(1n << 60n, 8)],
    ];
    for (const [what, damage] of variants) {
      const b = Buffer.from(good);
      damage(b);
      assert.equal(
        thrownCode(() => new FrameDecoder().push(b)),
        "WIRE_PROTOCOL",
        what,
      );
    }
    const noSeq = frameOf(
      { type: "POINT", pointId: "p", consistency: "crash", takenAt: 1, disks: [{ index: 0, sizeBytes: 1 }] },
      0,
    );
    assert.equal(
      thrownCode(() => new FrameDecoder().push(noSeq)),
      "WIRE_PROTOCOL",
    );
    // An HTTP request sent to the wire by mistake is not a frame.
    assert.equal(
      thrownCode(() => new FrameDecoder().push(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))),
      "WIRE_PROTOCOL",
    );
  });

  void it("refuses any single flipped bit with a checksum or protocol error", () =>
    check(
      fc.property(anyMessage, fc.nat(), fc.integer({ min: 0, max: 7 }), (msg, pos, bit) => {
        const seq = msg.type === "BLOCKS" || msg.type === "POINT" ? 9 : 0;
        const b = frameOf(msg, seq);
        const at = pos % b.length;
        b[at]! ^= 1 << bit;
        const code = thrownCode(() => {
          const frames = new FrameDecoder().push(b);
          // A flip in the length field may leave the decoder waiting for more: not a frame either.
          assert.equal(frames.length, 0);
        });
        assert.ok(["WIRE_CHECKSUM", "WIRE_PROTOCOL", "WIRE_FRAME_TOO_LARGE", "none"].includes(code), code);
        if (at >= 20 || (at < 16 && at >= 8 && seq !== 0)) assert.notEqual(code, "none");
      }),
      500,
    ));
});
