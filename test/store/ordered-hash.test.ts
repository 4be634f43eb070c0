/**
 * The ordered hash of an export (sha256 option) on its own thread: pieces
 * given out of order, in shared memory, with zeros between them, hash as the
 * bytes in disk order; each piece's buffer is given back only once it was
 * hashed; a missing piece fails the digest.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { HashThread } from "../../src/store/hash-thread.js";
import { OrderedHash } from "../../src/store/ordered-hash.js";

void describe("OrderedHash on a HashThread", () => {
  void it("hashes pieces given out of order, zeros included, and releases each once hashed", async () => {
    const size = 5 * (1 << 20) + 123;
    const disk = Buffer.alloc(size);
    // Data, zeros, data, zeros, data (the last piece short).
    const pieces: [number, number, boolean][] = [
      [0, 1 << 20, true],
      [1 << 20, 2 << 20, false],
      [3 << 20, 1 << 20, true],
      [4 << 20, (1 << 20) - 4096, false],
      [(5 << 20) - 4096, 4096 + 123, true],
    ];
    const shared = new SharedArrayBuffer(size);
    for (const [at, len, data] of pieces) if (data) randomBytes(len).copy(disk, at);
    new Uint8Array(shared).set(disk);
    const thread = new HashThread();
    try {
      const hash = new OrderedHash(thread);
      const released: number[] = [];
      let done!: () => void;
      const all = new Promise<void>((r) => (done = r));
      for (const [at, len, data] of [...pieces].reverse()) {
        if (!data) hash.zeros(at, len);
        else
          hash.put(at, new Uint8Array(shared, at, len), () => {
            released.push(at);
            if (released.length === 3) done();
          });
      }
      assert.equal(hash.hashed, size, "every piece was handed on once the first arrived");
      assert.equal(await hash.digest(size), createHash("sha256").update(disk).digest("hex"));
      await all;
      assert.deepEqual(released, [0, 3 << 20, (5 << 20) - 4096], "released in disk order, once hashed");
    } finally {
      await thread.close();
    }
  });

  void it("rejects the digest when a piece is missing", async () => {
    const thread = new HashThread();
    try {
      const hash = new OrderedHash(thread);
      hash.zeros(4096, 4096);
      await assert.rejects(hash.digest(8192), /hashed 0 of 8192 bytes/);
    } finally {
      await thread.close();
    }
  });
});
