import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { FaultyBackend } from "../../src/store/backends/faulty.js";
import { randomBytes } from "node:crypto";
import { OBJECT_OVERHEAD, ObjectKind } from "../../src/store/codec.js";
import {
  LocalBackend,
  type Pit,
  type Repository,
  entryId,
  entryLocation,
  exportDisk,
  importDisks,
  verifyRepository,
  walkBlockMap,
  writeKeyFile,
} from "../../src/store/index.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;
const root = path.resolve(import.meta.dirname, "../../..");

void describe("damage is found, named and never exported", () => {
  let dir: string;
  let repoDir: string;
  let repo: Repository;
  let faulty: FaultyBackend;
  let pit: Pit;
  /** Chunk index 5 of disk 0 (inside the first random stripe): its keyed name, its pack and where in it. */
  let victim: { name: string; pack: string; file: string; offset: number; length: number };

  beforeEach(async () => {
    dir = await tempDir();
    repoDir = path.join(dir, "repo");
    const image = path.join(dir, "disk.img");
    await writeMixedImage(image, 6 << 20, 42, 1 << 20);
    faulty = new FaultyBackend(new LocalBackend(repoDir));
    repo = await newRepository({ backend: faulty, chunkSize: CHUNK });
    pit = (await importDisks(repo, { server: "app01", disks: [image] })).pit;
    const entries: Buffer[] = [];
    await walkBlockMap(repo, pit.disks[0]!, (i, e) => void (entries[i] = Buffer.from(e)));
    const loc = entryLocation(entries[5]!);
    const pack = repo.packName(loc.pack);
    victim = {
      name: repo.chunkName(entryId(entries[5]!)),
      pack,
      file: path.join(repoDir, pack),
      offset: loc.offset,
      length: loc.length,
    };
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const affectsChunk5 = (report: Awaited<ReturnType<typeof verifyRepository>>) => {
    const d = report.damage.find((x) => x.object === victim.name);
    assert.ok(d, `damage names ${victim.name}: ${JSON.stringify(report.damage)}`);
    assert.deepEqual(d.affects, [
      { pit: pit.id, server: "app01", disk: 0, ranges: [[5 * CHUNK, 6 * CHUNK]] },
    ]);
    assert.match(d.message, new RegExp(victim.pack));
    return d;
  };

  /** Damage to the pack as a whole (missing, empty, cut short): it covers chunk 5 and what follows it. */
  const packDamage = (report: Awaited<ReturnType<typeof verifyRepository>>) => {
    const d = report.damage.find((x) => x.object === victim.pack);
    assert.ok(d, `damage names ${victim.pack}: ${JSON.stringify(report.damage)}`);
    assert.equal(d.kind, "pack");
    const ranges = d.affects.flatMap((a) => (a.pit === pit.id && a.disk === 0 ? a.ranges : []));
    assert.ok(
      ranges.some(([from, to]) => from <= 5 * CHUNK && 6 * CHUNK <= to),
      `chunk 5 is among the ranges ${JSON.stringify(ranges)}`,
    );
    return d;
  };

  const patchPack = async (at: number, bytes: Buffer) => {
    const fh = await fs.open(victim.file, "r+");
    await fh.write(bytes, 0, bytes.length, at);
    await fh.close();
  };

  void it("a flipped bit: export refuses naming the chunk, verify --read-data names PIT and byte range", async () => {
    const at = victim.offset + (victim.length >> 1);
    const data = await fs.readFile(victim.file);
    await patchPack(at, Buffer.from([data[at]! ^ 0x04]));
    const out = path.join(dir, "out.img");
    await assert.rejects(exportDisk(repo, pit, 0, out), (e: Error & { code?: string }) => {
      assert.equal(e.code, "STORE_OBJECT_CORRUPT");
      assert.match(e.message, new RegExp(`chunk 5 at bytes ${5 * CHUNK}-${6 * CHUNK - 1}`));
      assert.match(e.message, new RegExp(pit.id));
      return true;
    });
    await assert.rejects(fs.stat(out), "no image is left behind");
    await assert.rejects(fs.stat(`${out}.lifeboat-partial`), "no partial image is left behind");
    assert.equal((await verifyRepository(repo)).ok, true, "structure alone cannot see a flipped bit");
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, false);
    assert.equal(affectsChunk5(report).code, "STORE_OBJECT_CORRUPT");
  });

  void it("truncated and zero-length objects are reported as such, without reading data", async () => {
    await fs.truncate(victim.file, victim.offset + 10);
    let d = packDamage(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_TRUNCATED");
    await fs.writeFile(victim.file, Buffer.alloc(0));
    d = packDamage(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_EMPTY");
    await fs.rm(victim.file);
    d = packDamage(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_MISSING");
  });

  void it("a chunk that decrypts but does not match its id is caught", async () => {
    // A well-formed object for the victim's name, of its size, holding other (incompressible) bytes.
    const forged = repo.codec.encode(
      victim.name,
      ObjectKind.chunk,
      randomBytes(victim.length - OBJECT_OVERHEAD),
    );
    assert.equal(forged.length, victim.length);
    await patchPack(victim.offset, forged);
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(affectsChunk5(report).code, "STORE_CHUNK_MISMATCH");
    await assert.rejects(exportDisk(repo, pit, 0, path.join(dir, "o.img")), { code: "STORE_CHUNK_MISMATCH" });
  });

  void it("a read that fails once and then succeeds is a transient error, not damage", async () => {
    // The first read of the pack (its index) fails; the first read of a stretch of chunks comes back damaged.
    let corrupted = false;
    faulty.corruptOnGet((n) => n === victim.pack, {
      mutate: (d) => {
        if (corrupted || d.length < 4 * CHUNK) return d;
        corrupted = true;
        const copy = Buffer.from(d);
        copy[copy.length >> 1]! ^= 1;
        return copy;
      },
    });
    faulty.failNext("get", 1, undefined, { when: (n) => n === victim.pack });
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, true);
    assert.equal(report.transientErrors, 2);
  });

  void it("the CLI's verify exits 3 on damage and prints the affected PIT and range", async () => {
    const keyFile = path.join(dir, "repo.key");
    await writeKeyFile(keyFile, repo.keyFile);
    const data = await fs.readFile(victim.file);
    await patchPack(victim.offset + 40, Buffer.from([data[victim.offset + 40]! ^ 1]));
    const run = spawnSync(
      process.execPath,
      [
        path.join(root, "bin/lifeboat.js"),
        "store",
        "verify",
        "--repo",
        repoDir,
        "--key-file",
        keyFile,
        "--read-data",
        "--json",
      ],
      { encoding: "utf8" },
    );
    assert.equal(run.status, 3, run.stderr);
    const report = JSON.parse(run.stdout) as Awaited<ReturnType<typeof verifyRepository>>;
    affectsChunk5(report);
  });
});
