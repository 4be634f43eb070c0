import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  DirtySet,
  decodeDirtySet,
  encodeDirtySet,
  loadDirtySet,
  saveDirtySet,
  type DirtySetOptions,
} from "../../src/agent/index.js";

const seed = process.env.LIFEBOAT_SEED ? Number(process.env.LIFEBOAT_SEED) : undefined;
const params = { numRuns: 200, ...(seed !== undefined ? { seed } : {}) };

/** The model: one flag per byte of the disk. */
type Model = Uint8Array;

function covered(set: DirtySet): Uint8Array {
  const cov = new Uint8Array(set.diskSize);
  let prevEnd = -1;
  for (const r of set.extents()) {
    assert.ok(r.length > 0, "no empty extents");
    assert.ok(r.offset > prevEnd, "extents sorted, disjoint and not adjacent");
    assert.ok(r.offset + r.length <= set.diskSize, "extents inside the disk");
    cov.fill(1, r.offset, r.offset + r.length);
    prevEnd = r.offset + r.length;
  }
  return cov;
}

function assertCovers(set: DirtySet, model: Model, what: string): void {
  const cov = covered(set);
  const lost = model.findIndex((d, i) => d === 1 && cov[i] === 0);
  assert.equal(lost, -1, `${what}: dirty byte ${lost} lost`);
}

type Op =
  | { kind: "add"; offset: number; length: number; at: number }
  | { kind: "take" }
  | { kind: "putBack" }
  | { kind: "coarsen" }
  | { kind: "persist"; clean: boolean };

const opArb = (disk: number, bs: number): fc.Arbitrary<Op> =>
  fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant("add" as const),
        offset: fc.integer({ min: 0, max: disk + 64 }),
        length: fc.oneof(fc.integer({ min: 0, max: bs / 2 }), fc.integer({ min: 0, max: 4 * bs })),
        at: fc.integer({ min: 0, max: 1e6 }),
      }),
    },
    { weight: 1, arbitrary: fc.constant({ kind: "take" as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: "putBack" as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: "coarsen" as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("persist" as const), clean: fc.boolean() }) },
  );

const scenarioArb = fc
  .record({
    blockSize: fc.constantFrom(512, 1024, 2048),
    blocks: fc.integer({ min: 1, max: 12 }),
    tail: fc.integer({ min: 0, max: 511 }),
    maxBitmapBytes: fc.integer({ min: 1, max: 4 }),
    maxPartialBlocks: fc.integer({ min: 1, max: 6 }),
    maxRangesPerBlock: fc.integer({ min: 1, max: 4 }),
  })
  .chain((o) => {
    const diskSize = o.blocks * o.blockSize + o.tail;
    const opts: DirtySetOptions = { ...o, diskSize };
    return fc.tuple(fc.constant(opts), fc.array(opArb(diskSize, o.blockSize), { maxLength: 60 }));
  });

void describe("DirtySet", () => {
  void it("never loses a dirty byte: small caps, coarsening, take, put back, persistence", () => {
    fc.assert(
      fc.property(scenarioArb, ([opts, ops]) => {
        let set = new DirtySet(opts);
        let model: Model = new Uint8Array(opts.diskSize);
        let since: number | null = null; // the model's oldest write time
        const taken: { set: DirtySet; model: Model; since: number | null }[] = [];
        const older = (a: number | null, b: number | null) =>
          a === null ? b : b === null ? a : Math.min(a, b);
        for (const op of ops) {
          switch (op.kind) {
            case "add": {
              set.add(op.offset, op.length, op.at);
              const end = Math.min(op.offset + op.length, opts.diskSize);
              if (end > op.offset) {
                model.fill(1, op.offset, end);
                since = older(since, op.at);
              }
              break;
            }
            case "take":
              taken.push({ set: set.take(), model, since });
              model = new Uint8Array(opts.diskSize);
              since = null;
              assert.ok(set.isEmpty, "the set is empty after a take");
              break;
            case "putBack": {
              const t = taken.pop();
              if (t) {
                set.merge(t.set);
                model = model.map((d, i) => d | t.model[i]!);
                since = older(since, t.since);
              }
              break;
            }
            case "coarsen":
              set.coarsen();
              break;
            case "persist": {
              const decoded = decodeDirtySet(encodeDirtySet(set, op.clean));
              assert.equal(decoded.cleanShutdown, op.clean);
              assert.deepEqual(decoded.set.extents(), set.extents(), "a round trip keeps the extents");
              set = decoded.set;
              break;
            }
          }
          assertCovers(set, model, op.kind);
          assert.equal(set.isEmpty, set.extents().length === 0, `${op.kind}: isEmpty says what extents hold`);
          assert.equal(set.dirtySince, since, `${op.kind}: the oldest write's time`);
        }
        // Writes after a take never reach the taken set, and the taken set keeps what it had.
        for (const t of taken) {
          assertCovers(t.set, t.model, "taken");
          assert.equal(t.set.dirtySince, t.since);
        }
        assert.ok(set.memoryBytes() <= Math.ceil(opts.diskSize / 8) + 64 * 100);
      }),
      params,
    );
  });

  void it("is exact when no cap is reached (4 KiB writes cost 4 KiB, not a block)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: 1 << 20 }), fc.nat({ max: 200_000 })), { maxLength: 40 }),
        (writes) => {
          const diskSize = (1 << 20) + 4096;
          const set = new DirtySet({ diskSize, blockSize: 65536, maxRangesPerBlock: 1000 });
          const model = new Uint8Array(diskSize);
          for (const [o, l] of writes) {
            set.add(o, l);
            model.fill(1, o, Math.min(diskSize, o + l));
          }
          assert.deepEqual(covered(set), model);
          assert.equal(
            set.dirtyBytes(),
            model.reduce((n, d) => n + d, 0),
          );
        },
      ),
      params,
    );
    const s = new DirtySet({ diskSize: 1 << 30 });
    s.addSectors(8 * 1000, 8);
    assert.deepEqual(s.extents(), [{ offset: 4096 * 1000, length: 4096 }]);
  });

  void it("fits its bitmap under the cap by coarsening, and reports the granule", () => {
    const s = new DirtySet({ diskSize: 2 ** 40, blockSize: 65536, maxBitmapBytes: 1 << 20 });
    assert.equal(s.granule, 131072, "1 TiB at 64 KiB needs 2 MiB of bits: one doubling");
    s.add(5 << 20, 10);
    s.add(2 ** 40 - 1, 1);
    assert.deepEqual(s.extents(), [
      { offset: 5 << 20, length: 10 },
      { offset: 2 ** 40 - 1, length: 1 },
    ]);
    s.add(0, 70000);
    assert.deepEqual(s.extents()[0], { offset: 0, length: 131072 }, "a whole block dirties its granule");
    assert.ok(s.memoryBytes() < 2 << 20);
  });

  void it("saves durably and reports clean, unclean, missing and corrupt files", async (t) => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-dirty-"));
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, "disk0.dirty");
    assert.deepEqual(await loadDirtySet(file), { status: "missing", set: null });

    const set = new DirtySet({ diskSize: 10 * 2 ** 30 });
    set.add(12345, 4096);
    set.add(1 << 30, 3 << 20);
    await saveDirtySet(file, set, { cleanShutdown: false });
    let loaded = await loadDirtySet(file);
    assert.equal(loaded.status, "unclean");
    assert.deepEqual(loaded.set!.extents(), set.extents());

    await saveDirtySet(file, set, { cleanShutdown: true });
    loaded = await loadDirtySet(file);
    assert.equal(loaded.status, "clean");
    assert.deepEqual(loaded.set!.extents(), set.extents());
    assert.deepEqual(await fs.readdir(dir), ["disk0.dirty"], "no temporary file is left");
    const size = (await fs.stat(file)).size;
    assert.ok(size < 4096, `a 10 GiB disk's set with two ranges stores in ${size} bytes`);

    const bytes = await fs.readFile(file);
    bytes[60]! ^= 1;
    await fs.writeFile(file, bytes);
    loaded = await loadDirtySet(file);
    assert.equal(loaded.status, "corrupt");
    assert.match(loaded.problem!, /checksum/);
  });
});
