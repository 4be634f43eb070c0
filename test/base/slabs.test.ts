import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { SLAB_STEP, type Slab, SlabTable, Slabs } from "../../src/base/slabs.js";

const MiB = 1 << 20;

void describe("Slabs", () => {
  void it("makes slabs in whole steps, so that runs of varying length reuse them", () => {
    const slabs = new Slabs(8 * MiB);
    const a = slabs.take(100);
    assert.equal(a.byteLength, SLAB_STEP);
    assert.equal(a.memory.byteLength, SLAB_STEP);
    const b = slabs.take(SLAB_STEP + 1);
    assert.equal(b.byteLength, 2 * SLAB_STEP);
    slabs.giveBack(a);
    slabs.giveBack(b);
    // The smallest that fits: a run of 0.9 MiB, then one of 1.5 MiB, take the two back.
    assert.equal(slabs.take(0.9 * MiB), a);
    assert.equal(slabs.take(1.5 * MiB), b);
    assert.notEqual(slabs.take(10), a, "both are in use: a new one");
  });

  void it("keeps every slab a round of runs held, so the next round makes none", () => {
    const slabs = new Slabs(40 * MiB);
    const made = new Set<SharedArrayBuffer>();
    const madeIn: number[] = [];
    for (let round = 0; round < 20; round++) {
      // Nine jobs at once, of varying size up to 3 MiB, as continuous shipping holds them.
      const before = made.size;
      const held: Slab[] = [];
      for (let j = 0; j < 9; j++) held.push(slabs.take(((round * 7 + j * 3) % 12) * 0.25 * MiB + 1));
      for (const s of held) made.add(s.memory);
      for (const s of held.reverse()) slabs.giveBack(s);
      madeIn.push(made.size - before);
    }
    assert.ok(made.size <= 18, `${made.size} slabs made for 20 rounds of 9`);
    assert.deepEqual(
      madeIn.slice(10),
      new Array<number>(10).fill(0),
      `new slabs per round: ${madeIn.join(" ")}`,
    );
  });

  void it("lets the largest spares go past its budget, and has the workers forget them", () => {
    const slabs = new Slabs(40 * MiB);
    const w = new Worker("", { eval: true });
    try {
      // An initial sync's large slabs, then small ones.
      const large = [slabs.take(17 * MiB), slabs.take(17 * MiB), slabs.take(17 * MiB)];
      for (const s of large) slabs.ref(s, w);
      for (const s of large) slabs.giveBack(s);
      const round = () => {
        const held = Array.from({ length: 9 }, () => slabs.take(3 * MiB));
        for (const s of held) slabs.giveBack(s);
        return held;
      };
      // Two large spares (34 MiB) were kept: the first round's runs took them, and past the
      // budget they went, the largest first, until only runs of this size are left.
      assert.equal(round().filter((s) => s.byteLength > 3 * MiB).length, 2);
      assert.equal(round().filter((s) => s.byteLength > 3 * MiB).length, 1);
      assert.equal(round().filter((s) => s.byteLength > 3 * MiB).length, 0);
      const before = new Set(round().map((s) => s.memory));
      const after = round();
      assert.ok(
        after.every((s) => before.has(s.memory)),
        "once settled, a round makes no new slab",
      );
      // The worker is told to forget all three large slabs in its next message.
      const next = slabs.take(MiB);
      const ref = slabs.ref(next, w);
      assert.deepEqual([...(ref.forget ?? [])].sort(), large.map((s) => s.id).sort());
      const table = new SlabTable();
      for (const s of large) table.open({ slab: s.id, memory: s.memory });
      table.open(ref);
      assert.throws(() => table.open({ slab: large[0]!.id }), /never given/);
    } finally {
      void w.terminate();
    }
  });
});
