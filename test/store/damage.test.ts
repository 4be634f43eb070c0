import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { FaultyBackend } from "../../src/store/backends/faulty.js";
import { ObjectKind } from "../../src/store/codec.js";
import {
  LocalBackend,
  type Pit,
  type Repository,
  exportDisk,
  importDisks,
  verifyRepository,
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
  /** Chunk index 5 of disk 0 (inside the first random stripe) and its object file. */
  let victim: { name: string; file: string };

  beforeEach(async () => {
    dir = await tempDir();
    repoDir = path.join(dir, "repo");
    const image = path.join(dir, "disk.img");
    await writeMixedImage(image, 6 << 20, 42, 1 << 20);
    faulty = new FaultyBackend(new LocalBackend(repoDir));
    repo = await newRepository({ backend: faulty, chunkSize: CHUNK });
    pit = (await importDisks(repo, { server: "app01", disks: [image] })).pit;
    const ids: Buffer[] = [];
    const { walkBlockMap } = await import("../../src/store/index.js");
    await walkBlockMap(repo, pit.disks[0]!, (i, id) => void (ids[i] = Buffer.from(id)));
    const name = repo.chunkName(ids[5]!);
    victim = { name, file: path.join(repoDir, name) };
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const affectsChunk5 = (report: Awaited<ReturnType<typeof verifyRepository>>) => {
    const d = report.damage.find((x) => x.object === victim.name);
    assert.ok(d, `damage names ${victim.name}`);
    assert.deepEqual(d.affects, [
      { pit: pit.id, server: "app01", disk: 0, ranges: [[5 * CHUNK, 6 * CHUNK]] },
    ]);
    return d;
  };

  void it("a flipped bit: export refuses naming the chunk, verify --read-data names PIT and byte range", async () => {
    const data = await fs.readFile(victim.file);
    data[data.length >> 1]! ^= 0x04;
    await fs.writeFile(victim.file, data);
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
    const data = await fs.readFile(victim.file);
    await fs.writeFile(victim.file, data.subarray(0, 10));
    let d = affectsChunk5(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_TRUNCATED");
    await fs.writeFile(victim.file, Buffer.alloc(0));
    d = affectsChunk5(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_EMPTY");
    await fs.rm(victim.file);
    d = affectsChunk5(await verifyRepository(repo));
    assert.equal(d.code, "STORE_OBJECT_MISSING");
  });

  void it("a chunk that decrypts but does not match its id is caught", async () => {
    // A well-formed object under the victim's name, holding other bytes.
    const forged = repo.codec.encode(victim.name, ObjectKind.chunk, Buffer.alloc(CHUNK, 0x55));
    await fs.writeFile(victim.file, forged);
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(affectsChunk5(report).code, "STORE_CHUNK_MISMATCH");
    await assert.rejects(exportDisk(repo, pit, 0, path.join(dir, "o.img")), { code: "STORE_CHUNK_MISMATCH" });
  });

  void it("a read that fails once and then succeeds is a transient error, not damage", async () => {
    faulty.corruptOnGet((n) => n === victim.name, { times: 1 });
    faulty.failNext("get", 1, undefined, { when: (n) => n.startsWith("chunks/") && n !== victim.name });
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, true);
    assert.equal(report.transientErrors, 2);
  });

  void it("the CLI's verify exits 3 on damage and prints the affected PIT and range", async () => {
    const keyFile = path.join(dir, "repo.key");
    await writeKeyFile(keyFile, repo.keyFile);
    const data = await fs.readFile(victim.file);
    data[40]! ^= 1;
    await fs.writeFile(victim.file, data);
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
