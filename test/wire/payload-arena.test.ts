/**
 * Small frame payloads are carved out of shared blocks, and a block is
 * reused only once every payload in it has come back: a payload carved
 * again too early would change the bytes of a frame not yet acknowledged.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { PayloadArena } from "../../src/wire/index.js";

void describe("payload arena", () => {
  void it("carves payloads one after another with their headroom, and refuses large ones", () => {
    const arena = new PayloadArena(2, 4096);
    const a = arena.take(100, 24)!;
    const b = arena.take(200, 24)!;
    assert.equal(a.length, 100);
    assert.equal(a.buffer, b.buffer, "one block");
    assert.equal(a.byteOffset, 24);
    assert.equal(b.byteOffset, 24 + 128, "after a's headroom and bytes, on 8 bytes");
    assert.ok(arena.lends(a) && arena.lends(b));
    assert.ok(!arena.lends(a.subarray(1)), "a view that is not the payload is not lent");
    assert.equal(arena.take(1025), undefined, "over a quarter of a block");
  });

  void it("reuses a block only once all its payloads are back, and ignores what it did not lend", () => {
    const arena = new PayloadArena(2, 4096);
    const first = [arena.take(1000)!, arena.take(1000)!, arena.take(1000)!, arena.take(1000)!];
    const bytes = first.map((p) => {
      randomBytes(p.length).copy(p);
      return Buffer.from(p);
    });
    const next = arena.take(1000)!; // the first block is full: a second one
    assert.notEqual(next.buffer, first[0]!.buffer);
    for (const p of first.slice(0, 3)) arena.release(p);
    arena.release(first[0]!); // again: ignored
    arena.release(Buffer.alloc(1000)); // not the arena's: ignored
    // Fill the second block; the third must not be the first while first[3] is out.
    const more = [arena.take(1000)!, arena.take(1000)!, arena.take(1000)!, arena.take(1000)!];
    assert.ok(more.every((p) => p.buffer !== first[0]!.buffer));
    for (const p of more) p.fill(0xee);
    assert.deepEqual(Buffer.from(first[3]!), bytes[3], "the payload still out kept its bytes");
    arena.release(first[3]!);
    assert.ok(!arena.lends(first[3]!));
    // Every block is free now: the current one is carved on, then a spare one is reused.
    for (const p of [next, ...more]) arena.release(p);
    const earlier = new Set([first[0]!.buffer, next.buffer]);
    const again = Array.from({ length: 5 }, () => arena.take(1000)!);
    assert.equal(again[0]!.buffer, more[3]!.buffer, "the current block goes on");
    assert.ok(earlier.has(again[4]!.buffer), "then a free block is reused, not a new one made");
  });
});
