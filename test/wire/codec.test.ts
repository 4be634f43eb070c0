import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { isLifeboatError } from "../../src/base/index.js";
import {
  type BlocksMessage,
  type DiskInfo,
  FrameType,
  checkBlocks,
  chooseVersion,
  decodeMessage,
  encodeMessage,
} from "../../src/wire/index.js";
import { anyMessage, canon, check } from "./arbitraries.js";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isLifeboatError(err)) return err.code;
    throw err;
  }
  return "none";
}

const hash = Buffer.alloc(32, 1);

void describe("message codec", () => {
  void it("round-trips every message type", () =>
    check(
      fc.property(anyMessage, (msg) => {
        const { type, payload } = encodeMessage(msg);
        assert.equal(canon(decodeMessage(type, payload)), canon(msg));
      }),
      1000,
    ));

  void it("refuses truncated and overlong binary payloads", () =>
    check(
      fc.property(anyMessage, fc.nat(), (msg, n) => {
        const { type, payload } = encodeMessage(msg);
        if (!["BLOCKS", "HAVE_QUERY", "HAVE", "ACK", "PING", "PONG"].includes(msg.type)) return;
        if (payload.length > 0) {
          const short = payload.subarray(0, n % payload.length);
          assert.equal(
            code(() => decodeMessage(type, short)),
            "WIRE_PROTOCOL",
            `${msg.type} cut to ${short.length}`,
          );
        }
        const long = Buffer.concat([payload, Buffer.alloc(1 + (n % 5))]);
        assert.equal(
          code(() => decodeMessage(type, long)),
          "WIRE_PROTOCOL",
        );
      }),
      500,
    ));

  void it("refuses JSON messages that break their schema, and drops fields it does not know", () => {
    const json = (v: unknown) => Buffer.from(JSON.stringify(v));
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, Buffer.from("{not json"))),
      "WIRE_PROTOCOL",
    );
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, Buffer.from([0xff, 0xfe]))),
      "WIRE_PROTOCOL",
    );
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, json([1, 2]))),
      "WIRE_PROTOCOL",
    );
    const hello = { versions: [1], agent: { serverId: "db1", hostname: "db1", version: "0.1.0" }, disks: [] };
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, json({ ...hello, versions: [] }))),
      "WIRE_PROTOCOL",
    );
    const twice = { index: 0, id: "sda", sizeBytes: 1 << 20, blockSize: 65536 };
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, json({ ...hello, disks: [twice, twice] }))),
      "WIRE_PROTOCOL",
    );
    assert.equal(
      code(() => decodeMessage(FrameType.HELLO, json({ ...hello, disks: [{ ...twice, blockSize: 1000 }] }))),
      "WIRE_PROTOCOL",
    );
    const point = { pointId: "p1", consistency: "sloppy", takenAt: 1, disks: [{ index: 0, sizeBytes: 1 }] };
    assert.equal(
      code(() => decodeMessage(FrameType.POINT, json(point))),
      "WIRE_PROTOCOL",
    );
    // A newer release's extra field is dropped, not refused.
    const decoded = decodeMessage(FrameType.HELLO, json({ ...hello, compression: "zstd-2" }));
    assert.deepEqual(Object.keys(decoded).sort(), ["agent", "disks", "type", "versions"]);
  });

  void it("refuses BLOCKS whose counts, encodings or patches make no sense", () => {
    const enc = (m: BlocksMessage) => encodeMessage(m).payload;
    const ok: BlocksMessage = {
      type: "BLOCKS",
      disk: 0,
      offset: 0,
      kind: "blocks",
      blocks: [{ encoding: "zero", sha256: hash, data: Buffer.alloc(0) }],
    };
    assert.equal(
      code(() => decodeMessage(FrameType.BLOCKS, enc(ok))),
      "none",
    );
    const refWithData = enc({ ...ok, blocks: [{ encoding: "ref", sha256: hash, data: Buffer.alloc(4) }] });
    assert.equal(
      code(() => decodeMessage(FrameType.BLOCKS, refWithData)),
      "WIRE_PROTOCOL",
    );
    const none = enc({ ...ok, blocks: [] });
    assert.equal(
      code(() => decodeMessage(FrameType.BLOCKS, none)),
      "WIRE_PROTOCOL",
    );
    const badEncoding = Buffer.from(enc(ok));
    badEncoding[12] = 9;
    assert.equal(
      code(() => decodeMessage(FrameType.BLOCKS, badEncoding)),
      "WIRE_PROTOCOL",
    );
    const patch = (patches: { at: number; data: Buffer }[]) =>
      enc({ type: "BLOCKS", disk: 0, offset: 0, kind: "patch", sha256: hash, patches });
    const d = Buffer.alloc(10);
    assert.equal(
      code(() =>
        decodeMessage(
          FrameType.BLOCKS,
          patch([
            { at: 0, data: d },
            { at: 20, data: d },
          ]),
        ),
      ),
      "none",
    );
    assert.equal(
      code(() =>
        decodeMessage(
          FrameType.BLOCKS,
          patch([
            { at: 0, data: d },
            { at: 5, data: d },
          ]),
        ),
      ),
      "WIRE_PROTOCOL",
      "overlap",
    );
    assert.equal(
      code(() =>
        decodeMessage(
          FrameType.BLOCKS,
          patch([
            { at: 20, data: d },
            { at: 0, data: d },
          ]),
        ),
      ),
      "WIRE_PROTOCOL",
      "order",
    );
    assert.equal(
      code(() => decodeMessage(FrameType.BLOCKS, patch([{ at: 0, data: Buffer.alloc(0) }]))),
      "WIRE_PROTOCOL",
      "empty",
    );
  });

  void it("checks BLOCKS against the disks HELLO declared", () => {
    const disks: DiskInfo[] = [{ index: 1, id: "vdb", sizeBytes: 3 * 65536 + 4096, blockSize: 65536 }];
    const raw = (n: number) => ({ encoding: "raw" as const, sha256: hash, data: Buffer.alloc(n) });
    const blocks = (offset: number, bs: ReturnType<typeof raw>[], disk = 1): BlocksMessage => ({
      type: "BLOCKS",
      disk,
      offset,
      kind: "blocks",
      blocks: bs,
    });
    assert.equal(
      code(() => checkBlocks(blocks(0, [raw(65536), raw(65536)]), disks)),
      "none",
    );
    assert.equal(
      code(() => checkBlocks(blocks(3 * 65536, [raw(4096)]), disks)),
      "none",
      "the short last block",
    );
    assert.equal(
      code(() => checkBlocks(blocks(3 * 65536, [raw(65536)]), disks)),
      "WIRE_PROTOCOL",
      "too long for the last block",
    );
    assert.equal(
      code(() => checkBlocks(blocks(0, [raw(65536)], 0), disks)),
      "WIRE_PROTOCOL",
      "undeclared disk",
    );
    assert.equal(
      code(() => checkBlocks(blocks(4096, [raw(65536)]), disks)),
      "WIRE_PROTOCOL",
      "unaligned",
    );
    assert.equal(
      code(() => checkBlocks(blocks(2 * 65536, [raw(65536), raw(4096), raw(1)]), disks)),
      "WIRE_PROTOCOL",
      "past the end",
    );
    assert.equal(
      code(() => checkBlocks(blocks(0, [raw(100)]), disks)),
      "WIRE_PROTOCOL",
      "short raw block",
    );
    const patch = (offset: number, at: number, n: number): BlocksMessage => ({
      type: "BLOCKS",
      disk: 1,
      offset,
      kind: "patch",
      sha256: hash,
      patches: [{ at, data: Buffer.alloc(n) }],
    });
    assert.equal(
      code(() => checkBlocks(patch(65536, 61440, 4096), disks)),
      "none",
    );
    assert.equal(
      code(() => checkBlocks(patch(3 * 65536, 4000, 200), disks)),
      "WIRE_PROTOCOL",
      "patch past the disk's end",
    );
  });

  void it("negotiates the highest common version, and says so when there is none", () => {
    assert.equal(chooseVersion([1, 2, 3], [2, 3, 4]), 3);
    assert.equal(chooseVersion([1], [1]), 1);
    let err: unknown;
    try {
      chooseVersion([2, 3], [1]);
    } catch (e) {
      err = e;
    }
    assert.ok(isLifeboatError(err, "WIRE_VERSION_UNSUPPORTED"));
    assert.match(err.message, /this side speaks 2, 3, the peer 1/);
  });
});
