import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, describe, it } from "node:test";
import zstd from "zstd-napi/binding.js";
import { BlockPool, type PreparedBlock } from "../../src/agent/block-pool.js";

const BS = 64 * 1024;

/** A run of blocks: zeros, compressible text, random bytes, and a short last block. */
function run(seed: number): Buffer {
  const text = Buffer.from(`block ${seed} `.repeat(BS / 8)).subarray(0, BS);
  return Buffer.concat([Buffer.alloc(BS), text, randomBytes(BS), randomBytes(BS / 2)]);
}

/** Checks every prepared block against the bytes it came from. */
function check(blocks: PreparedBlock[], data: Buffer): void {
  assert.deepEqual(
    blocks.map((b) => b.encoding),
    ["zero", "zstd", "raw", "raw"],
  );
  const dctx = new zstd.DCtx();
  for (const [i, b] of blocks.entries()) {
    const plain = data.subarray(i * BS, Math.min(data.length, (i + 1) * BS));
    assert.deepEqual(b.plain, plain);
    if (b.encoding === "zero") continue;
    assert.deepEqual(b.sha256, createHash("sha256").update(plain).digest());
    if (b.encoding === "raw") assert.deepEqual(b.data, plain);
    else {
      const out = Buffer.alloc(plain.length);
      assert.equal(dctx.decompress(out, b.data), plain.length);
      assert.deepEqual(out, plain);
    }
  }
}

void describe("block pool", () => {
  const pool = new BlockPool(1, 2);
  // The agent's block workers do not keep the process alive by themselves.
  const alive = setInterval(() => {}, 1000);
  after(async () => {
    clearInterval(alive);
    await pool.close();
  });

  void it("prepares zero, compressible, incompressible and short blocks; frames declare their size", async () => {
    const data = run(1);
    const blocks = await pool.prepare(data, BS);
    check(blocks, data);
    const z = blocks[1]!;
    assert.equal(zstd.getFrameContentSize(z.data), BS);
  });

  void it("reuses a released run's slab, and never one whose blocks are still held", async () => {
    const a = run(2);
    const first = await pool.prepare(a, BS);
    const h = run(3);
    const held = await pool.prepare(h, BS); // not released: its slab is never handed out again
    const heldCopy = held.map((b) => ({ data: Buffer.from(b.data), plain: Buffer.from(b.plain) }));
    pool.release(first);
    const b = run(4);
    const second = await pool.prepare(b, BS);
    assert.equal(second[0]!.plain.buffer, first[0]!.plain.buffer, "the released slab serves the next run");
    check(second, b);
    pool.release(second);
    pool.release(second); // twice is harmless: the slab is taken back once
    const c = run(5);
    const third = await pool.prepare(c, BS);
    const fourth = await pool.prepare(run(6), BS);
    assert.notEqual(third[0]!.plain.buffer, fourth[0]!.plain.buffer, "two runs held at once, two slabs");
    for (const r of [third, fourth]) assert.notEqual(r[0]!.plain.buffer, held[0]!.plain.buffer);
    check(third, c);
    check(held, h); // untouched by every run prepared since
    assert.deepEqual(
      held.map((x) => ({ data: x.data, plain: x.plain })),
      heldCopy,
      "frames too are untouched",
    );
    pool.release(third);
    pool.release(fourth);
    pool.release(held);
  });

  void it("keeps a bounded set of slabs over many runs of varying sizes, every run right", async () => {
    const slabs = new Set<ArrayBufferLike>();
    const ahead: { blocks: Promise<PreparedBlock[]>; data: Buffer }[] = [];
    for (let i = 0; i < 60; i++) {
      // Runs of 1 to 8 blocks of random bytes, three prepared ahead as the agent does.
      const data = Buffer.concat([run(100 + i).subarray(BS, 2 * BS), randomBytes(((i % 7) + 1) * BS)]);
      ahead.push({ blocks: pool.prepare(data, BS), data });
      if (ahead.length < 3) continue;
      const next = ahead.shift()!;
      const blocks = await next.blocks;
      for (const [k, blk] of blocks.entries()) {
        const plain = next.data.subarray(k * BS, (k + 1) * BS);
        assert.deepEqual(blk.sha256, createHash("sha256").update(plain).digest(), `run ${i - 2} block ${k}`);
      }
      slabs.add(blocks[0]!.plain.buffer);
      pool.release(blocks);
    }
    for (const next of ahead) pool.release(await next.blocks);
    // At most 3 runs held and 6 slabs spare at any time.
    assert.ok(slabs.size <= 9, `${slabs.size} slabs for 60 runs`);
  });
});
