/**
 * The writer's known set (known-index.ts): a compact table of ids that finds
 * exactly the records added — ids sharing their leading bytes included —
 * through growth and spills to run files; claims that two runs cannot both
 * take; and an import whose known set spills at every turn, which must
 * still verify and export byte-identical.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { IdTable, KnownChunks } from "../../src/store/known-index.js";
import {
  ChunkIngest,
  type Repository,
  exportDisk,
  importDisks,
  loadKnownIds,
  verifyRepository,
} from "../../src/store/index.js";
import { prng, randomBuffer, writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const SEED = Number(process.env.LIFEBOAT_TEST_SEED ?? Date.now() % 1e9);

/** Ids from a seeded PRNG; every fourth shares its first 8 bytes with the one before (same shard, same home slot). */
function makeIds(n: number, seed: number): Buffer[] {
  const rand = prng(seed);
  const ids: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const id = randomBuffer(rand, 32);
    if (i % 4 === 3) ids[i - 1]!.copy(id, 0, 0, 8);
    if (id.every((b) => b === 0)) id[31] = 1;
    ids.push(id);
  }
  return ids;
}

/** A record for an id: the id, then bytes derived from it (so a wrong record is seen). */
function recordOf(id: Buffer, len: number): Buffer {
  const r = Buffer.alloc(len);
  id.copy(r);
  createHash("sha256")
    .update(id)
    .digest()
    .copy(r, 32, 0, len - 32);
  return r;
}

/** An id no table holds: a held one with its last byte changed (same shard, same probe start). */
function absent(id: Buffer): Buffer {
  const other = Buffer.from(id);
  other[31]! ^= 0x5a;
  return other;
}

void describe(`known set (seed ${SEED})`, () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("finds every record it was given through growth, and nothing else", () => {
    const ids = makeIds(50_000, SEED);
    const table = new IdTable(56, { memoryBytes: 1 << 30 });
    try {
      for (const id of ids) table.add(recordOf(id, 56));
      for (const id of ids.slice(0, 1000)) table.add(recordOf(id, 56)); // again: kept once
      assert.equal(table.size, 50_000);
      assert.equal(table.spills, 0);
      for (const id of ids) assert.deepEqual(table.get(id), recordOf(id, 56));
      const held = new Set(ids.map((id) => id.toString("hex")));
      for (const id of ids) {
        const other = absent(id);
        if (!held.has(other.toString("hex"))) assert.equal(table.get(other), undefined);
      }
      assert.equal([...table.records()].length, 50_000);
      assert.throws(() => table.add(Buffer.alloc(56)), RangeError, "the zero id is never a record");
      // Compact: well under the ~200 bytes a Map entry with a string key and a Buffer took.
      const perRecord = table.memoryBytes / table.size;
      assert.ok(perRecord < 120, `${perRecord.toFixed(1)} bytes per record`);
    } finally {
      table.close();
    }
  });

  void it("spills to run files beyond its budget and still finds every record, and nothing else", () => {
    const ids = makeIds(10_000, SEED + 1);
    const table = new IdTable(56, { memoryBytes: 0, spillDir: dir });
    try {
      for (const id of ids) table.add(recordOf(id, 56));
      assert.ok(table.spills >= 3, `${table.spills} spills`);
      for (const id of ids) assert.deepEqual(table.get(id), recordOf(id, 56));
      for (const id of ids) assert.equal(table.has(absent(id)), false);
      const seen = new Set([...table.records()].map((r) => r.toString("hex")));
      assert.deepEqual(seen, new Set(ids.map((id) => recordOf(id, 56).toString("hex"))));
    } finally {
      table.close();
    }
  });

  void it("lets one run claim a chunk; the others get its promise, then its entry", async () => {
    const known = new KnownChunks({ memoryBytes: 0, spillDir: dir });
    try {
      const [id, other] = makeIds(2, SEED + 2) as [Buffer, Buffer];
      assert.equal(known.get(id), undefined);
      const claim = known.claim(id);
      assert.throws(() => known.claim(id), /claiming a chunk being stored/);
      assert.equal(known.get(id), claim.promise);
      assert.equal(known.has(id), true);
      const entry = recordOf(id, 56);
      claim.resolve(entry);
      assert.deepEqual(await claim.promise, entry);
      assert.deepEqual(known.get(id), entry);
      const failed = known.claim(other);
      failed.reject(new Error("store failed"));
      await assert.rejects(known.get(other) as Promise<Buffer>, /store failed/);
    } finally {
      known.close();
    }
  });

  void it("stores a chunk once when two runs of the same bytes race", async () => {
    const repo = await newRepository({ chunkSize: 64 * 1024 });
    const ingest = new ChunkIngest(repo, await loadKnownIds(repo, []));
    try {
      const rand = prng(SEED + 3);
      const data = randomBuffer(rand, 8 * 64 * 1024);
      const copy = () => {
        const b = Buffer.allocUnsafeSlow(data.length);
        data.copy(b);
        return b;
      };
      const [a, b] = await Promise.all([ingest.run(copy()), ingest.run(copy())]);
      await ingest.finish();
      assert.deepEqual(a, b);
      assert.equal(ingest.stats.newChunks, 8);
      assert.equal(ingest.stats.dedupChunks, 8);
      for (const e of a) assert.deepEqual(ingest.known.chunks.get(e.subarray(0, 32)), e);
    } finally {
      await ingest.close();
    }
  });

  void it("imports, verifies and exports byte-identical with a known set that spills all the time", async () => {
    const repoDir = path.join(dir, "repo");
    // Small chunks and pages: many ids of both, so that both sets spill many times.
    const repo: Repository = await newRepository({ dir: repoDir, chunkSize: 16 * 1024, pageFanout: 4 });
    const image = path.join(dir, "disk.img");
    const size = 24 << 20;
    await writeMixedImage(image, size, SEED % 1000, 1 << 20);
    const spill = { chunkMemoryBytes: 0, pageMemoryBytes: 0, spillDir: path.join(dir, "spill") };
    const first = await importDisks(repo, { server: "app01", disks: [image], known: spill });
    // Again, now that every chunk is in the (spilled) known set: nothing new is stored.
    const again = await importDisks(repo, { server: "app01", disks: [image], known: spill });
    assert.equal(again.stats.newChunks, 0);
    assert.equal(again.stats.dedupChunks, first.stats.newChunks + first.stats.dedupChunks);
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, true, JSON.stringify(report));
    for (const { pit } of [first, again]) {
      const out = path.join(dir, `out-${pit.id}.img`);
      await exportDisk(repo, pit, 0, out);
      assert.ok((await fs.readFile(out)).equals(await fs.readFile(image)), `PIT ${pit.id} exports identical`);
    }
    // The known set of these PITs, with this budget, spills its chunks. Whether the pages spill too
    // depends on how their ids fall into the table's shards (a few hundred pages, 256 shards): the
    // page set's spilling is the same IdTable's, tested above with a zero budget.
    const known = await loadKnownIds(repo, [first.pit, again.pit], spill);
    assert.ok(known.chunks.memory.spills >= 2, `${known.chunks.memory.spills} chunk spills`);
    known.close();
    assert.deepEqual(await fs.readdir(spill.spillDir), [], "run files are unlinked");
  });
});
