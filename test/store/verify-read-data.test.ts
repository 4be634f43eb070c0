import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
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
