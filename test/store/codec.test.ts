import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { ObjectCodec, ObjectKind, OBJECT_OVERHEAD } from "../../src/store/codec.js";

const codec = new ObjectCodec(randomBytes(32), 1);
const name = "chunks/ab/abcdef";

function rejects(fn: () => unknown, code: string) {
  assert.throws(fn, (e: { code?: string }) => e.code === code);
}

void describe("object codec", () => {
  void it("round-trips compressible, incompressible and empty payloads", () => {
    for (const plain of [Buffer.alloc(100_000, 7), randomBytes(70_000), Buffer.alloc(0)]) {
      const enc = codec.encode(name, ObjectKind.chunk, plain);
      assert.deepEqual(codec.decode(name, ObjectKind.chunk, enc), plain);
    }
  });

  void it("encodes objects one after another into a caller's buffer, and refuses one that has no room", () => {
    const parts = [Buffer.alloc(50_000, 3), randomBytes(20_000), Buffer.alloc(0), Buffer.alloc(70_000, 9)];
    const dest = Buffer.alloc(
      parts.reduce((n, p) => n + p.length + OBJECT_OVERHEAD, 0),
      0xee,
    );
    let at = 0;
    const sizes = parts.map((p) => {
      const size = codec.encodeInto(name, ObjectKind.chunk, p, dest.subarray(at));
      at += size;
      return size;
    });
    assert.equal(sizes[1], 20_000 + OBJECT_OVERHEAD, "incompressible: stored as it is");
    assert.ok(sizes[3]! < 1000, "compressible: compressed");
    let from = 0;
    for (const [i, p] of parts.entries()) {
      assert.deepEqual(codec.decode(name, ObjectKind.chunk, dest.subarray(from, from + sizes[i]!)), p);
      from += sizes[i]!;
    }
    assert.ok(
      dest.subarray(at).every((b) => b === 0xee),
      "nothing written past the last object",
    );
    const small = Buffer.alloc(20_000 + OBJECT_OVERHEAD - 1, 0xee);
    assert.throws(() => codec.encodeInto(name, ObjectKind.chunk, randomBytes(20_000), small), RangeError);
    assert.ok(
      small.every((b) => b === 0xee),
      "a refused object writes nothing",
    );
  });

  void it("gives every object a nonce of its own, across refills of its nonce buffer", () => {
    const c = new ObjectCodec(randomBytes(32), 1);
    const plain = Buffer.from("the same plaintext every time");
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const enc = c.encode(name, ObjectKind.chunk, plain);
      seen.add(enc.subarray(8, 20).toString("hex")); // after the 8-byte header
      assert.deepEqual(c.decode(name, ObjectKind.chunk, enc), plain);
    }
    assert.equal(seen.size, 1000);
  });

  void it("compresses what compresses and never expands by more than the fixed overhead", () => {
    assert.ok(codec.encode(name, ObjectKind.chunk, Buffer.alloc(1 << 20, 1)).length < 1000);
    const random = randomBytes(1 << 16);
    assert.equal(codec.encode(name, ObjectKind.chunk, random).length, random.length + OBJECT_OVERHEAD);
  });

  void it("detects a flipped bit anywhere in the object", () => {
    const enc = codec.encode(name, ObjectKind.chunk, randomBytes(4096));
    for (const pos of [9, 20, enc.length >> 1, enc.length - 1]) {
      const bad = Buffer.from(enc);
      bad[pos]! ^= 0x10;
      rejects(() => codec.decode(name, ObjectKind.chunk, bad), "STORE_OBJECT_CORRUPT");
    }
  });

  void it("binds an object to its name and kind", () => {
    const enc = codec.encode(name, ObjectKind.chunk, randomBytes(100));
    rejects(() => codec.decode("chunks/ab/other", ObjectKind.chunk, enc), "STORE_OBJECT_CORRUPT");
    rejects(() => codec.decode(name, ObjectKind.page, enc), "STORE_OBJECT_CORRUPT");
  });

  void it("names empty, truncated and foreign objects as such", () => {
    rejects(() => codec.decode(name, ObjectKind.chunk, Buffer.alloc(0)), "STORE_OBJECT_EMPTY");
    const enc = codec.encode(name, ObjectKind.chunk, randomBytes(100));
    rejects(() => codec.decode(name, ObjectKind.chunk, enc.subarray(0, 20)), "STORE_OBJECT_TRUNCATED");
    rejects(
      () => codec.decode(name, ObjectKind.chunk, enc.subarray(0, enc.length - 5)),
      "STORE_OBJECT_CORRUPT",
    );
    rejects(() => codec.decode(name, ObjectKind.chunk, Buffer.alloc(100, 1)), "STORE_OBJECT_CORRUPT");
  });

  void it("refuses an object from a newer format version with a clear error", () => {
    const enc = codec.encode(name, ObjectKind.chunk, randomBytes(100));
    enc[4] = 9;
    rejects(() => codec.decode(name, ObjectKind.chunk, enc), "STORE_FORMAT_TOO_NEW");
  });

  void it("refuses another key", () => {
    const enc = codec.encode(name, ObjectKind.chunk, randomBytes(100));
    rejects(
      () => new ObjectCodec(randomBytes(32)).decode(name, ObjectKind.chunk, enc),
      "STORE_OBJECT_CORRUPT",
    );
  });
});
