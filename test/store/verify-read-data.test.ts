import assert from "node:assert/strict";
import { mkdirSync, promises as fs, renameSync, rmSync } from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import {
  type Pit,
  type Repository,
  entryId,
  entryLocation,
  importDisks,
  verifyRepository,
  walkBlockMap,
} from "../../src/store/index.js";
import { CHECK_BYTES } from "../../src/store/worker-pool.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;

/** A stored chunk: where the disk holds it, its keyed name, and where its object lies. */
interface Stored {
  index: number;
  name: string;
  pack: string;
  offset: number;
  length: number;
}

let dir: string;
let repo: Repository;
let pit: Pit;
let stored: Stored[];

before(async () => {
  dir = await tempDir();
  const image = path.join(dir, "disk.img");
  await writeMixedImage(image, 24 << 20, 7, 1 << 20);
  // A local directory: the chunk workers read its packs themselves.
  repo = await newRepository({ dir: path.join(dir, "repo"), chunkSize: CHUNK });
  assert.ok(repo.backend.properties.localRoot);
  pit = (await importDisks(repo, { server: "db01", disks: [image] })).pit;
  stored = [];
  await walkBlockMap(repo, pit.disks[0]!, (index, e) => {
    const loc = entryLocation(e);
    const pack = repo.packName(loc.pack);
    stored.push({ index, name: repo.chunkName(entryId(e)), pack, offset: loc.offset, length: loc.length });
  });
});
after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

void it("verify --read-data of a local repository names each damaged chunk of a pack, and only those", async () => {
  // Two incompressible chunks (each stored once) of one pack, further apart than a worker reads at once.
  const unique = stored.filter((s) => s.length > CHUNK);
  const pack = unique[0]!.pack;
  const inPack = unique.filter((s) => s.pack === pack).sort((a, b) => a.offset - b.offset);
  const first = inPack[1]!;
  const last = inPack.at(-1)!;
  assert.ok(last.offset - first.offset > CHECK_BYTES, `${last.offset - first.offset} bytes apart`);

  const clean = await verifyRepository(repo, { readData: true });
  assert.equal(clean.ok, true, JSON.stringify(clean.damage));
  const objects = new Map(stored.map((s) => [`${s.pack}@${s.offset}`, s.length]));
  assert.equal(clean.referencedChunks, objects.size);
  assert.equal(
    clean.bytesRead,
    [...objects.values()].reduce((n, l) => n + l, 0),
    "every referenced object is read once",
  );
  assert.equal(clean.transientErrors, 0);

  const file = path.join(dir, "repo", pack);
  const fh = await fs.open(file, "r+");
  for (const victim of [first, last]) {
    const at = victim.offset + (victim.length >> 1);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= 0x10;
    await fh.write(b, 0, 1, at);
  }
  await fh.close();

  const report = await verifyRepository(repo, { readData: true });
  assert.equal(report.ok, false);
  assert.deepEqual(report.damage.map((d) => d.object).sort(), [first.name, last.name].sort());
  for (const victim of [first, last]) {
    const d = report.damage.find((x) => x.object === victim.name)!;
    assert.equal(d.kind, "chunk");
    assert.equal(d.code, "STORE_OBJECT_CORRUPT");
    assert.match(
      d.message,
      new RegExp(`bytes ${victim.offset}-${victim.offset + victim.length - 1} of ${pack}`),
    );
    assert.deepEqual(d.affects, [
      { pit: pit.id, server: "db01", disk: 0, ranges: [[victim.index * CHUNK, (victim.index + 1) * CHUNK]] },
    ]);
  }
  assert.equal(report.transientErrors, 0, "a chunk damaged on disk is damaged when read again");
});

void it("verify --read-data reads a pack that GC moves to the trash while it runs, and names the chunks of one deleted meanwhile", async () => {
  const own = path.join(dir, "moving");
  await fs.mkdir(own);
  const moving = await newRepository({ dir: path.join(own, "repo"), chunkSize: CHUNK });
  const root = moving.backend.properties.localRoot!;
  // Three imports of different disks: each stores a pack of its own at least.
  const chunks: Stored[] = [];
  for (const seed of [11, 12, 13]) {
    const image = path.join(own, `disk-${seed}.img`);
    await writeMixedImage(image, 8 << 20, seed, 1 << 20);
    const { pit: p } = await importDisks(moving, { server: `app${seed}`, disks: [image] });
    await walkBlockMap(moving, p.disks[0]!, (index, e) => {
      const loc = entryLocation(e);
      chunks.push({
        index,
        name: moving.chunkName(entryId(e)),
        pack: moving.packName(loc.pack),
        offset: loc.offset,
        length: loc.length,
      });
    });
  }
  const packs = [...new Set(chunks.map((c) => c.pack))].sort();
  assert.ok(packs.length >= 3, `${packs.length} packs`);
  const gone = packs.at(-1)!;

  // Once the objects are listed and the trees walked, before any chunk is read, every pack moves
  // to the trash (as a GC run moves what it found unreferenced) but one, which is deleted.
  let moved = false;
  const report = await verifyRepository(moving, {
    readData: true,
    onProgress: (done) => {
      if (done > 0 || moved) return;
      moved = true;
      for (const pack of packs) {
        const from = path.join(root, pack);
        if (pack === gone) rmSync(from);
        else {
          const to = path.join(root, "trash", pack);
          mkdirSync(path.dirname(to), { recursive: true });
          renameSync(from, to);
        }
      }
    },
  });
  assert.ok(moved);
  const lost = chunks.filter((c) => c.pack === gone);
  assert.deepEqual(
    report.damage.map((d) => d.object).sort(),
    [...new Set(lost.map((c) => c.name)), gone].sort(),
    "only the deleted pack and its chunks are damage",
  );
  for (const d of report.damage) {
    assert.equal(d.code, "STORE_OBJECT_MISSING", `${d.object}: ${d.message}`);
    assert.equal(d.kind, d.object === gone ? "pack" : "chunk");
    if (d.kind === "chunk") assert.equal(d.affects.length, 1, `${d.object} is used by one PIT`);
  }
  const inTrash = new Map(
    chunks.filter((c) => c.pack !== gone).map((c) => [`${c.pack}@${c.offset}`, c.length]),
  );
  assert.equal(
    report.bytesRead,
    [...inTrash.values()].reduce((n, l) => n + l, 0),
    "every chunk of the packs in the trash was read, and checked out",
  );
  assert.equal(report.transientErrors, 0);
});
