import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  collectGarbage,
  exportDisk,
  forgetPits,
  importDisks,
  openBackend,
  parseRetention,
  repositoryStats,
  verifyRepository,
} from "../../src/store/index.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";
import { startS3Server, type TestS3Server } from "../support/s3-server.js";

const MiB = 1 << 20;

// The whole repository life cycle on an S3-compatible server: packs written whole, chunks read
// back with ranged GETs, verify, forget and two-step GC.
void describe("a repository on S3 (s3rver)", () => {
  let server: TestS3Server;
  let dir: string;
  before(async () => {
    server = await startS3Server();
    dir = await tempDir();
  });
  after(async () => {
    await server.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("imports, exports byte-identical through ranged reads, verifies and collects garbage", async () => {
    // Real time: GC compares the server's modification times (to the second) with its own clock.
    const margin = 1500;
    const backend = await openBackend(server.url);
    const repo = await newRepository({ backend });
    const a = path.join(dir, "a.img");
    const b = path.join(dir, "b.img");
    await writeMixedImage(a, 24 * MiB, 5, MiB);
    await writeMixedImage(b, 24 * MiB, 6, MiB);
    const first = await importDisks(repo, { server: "s1", disks: [a], packBytes: 4 * MiB });
    assert.ok(first.stats.packs >= 2, `${first.stats.packs} packs`);
    const stats = await repositoryStats(repo);
    assert.equal(stats.objects.packs, first.stats.packs, "one object per pack, none per chunk");
    const out = path.join(dir, "out.img");
    await exportDisk(repo, first.pit, 0, out);
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(a)));
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);

    await sleep(2 * margin);
    const second = await importDisks(repo, { server: "s1", disks: [b], packBytes: 4 * MiB });
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [first.pit.id] });
    await sleep(2 * margin);
    const r1 = await collectGarbage(repo, { safetyMarginMs: margin });
    assert.ok(r1.trashed >= first.stats.packs, JSON.stringify(r1));
    await sleep(2 * margin);
    const r2 = await collectGarbage(repo, { safetyMarginMs: margin });
    assert.equal(r2.deleted, r1.trashed);
    await exportDisk(repo, second.pit, 0, out, { overwrite: true });
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(b)));
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);
    await repo.close();
  });
});
