import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exportDisk, importDisks, repositoryStats, verifyRepository } from "../../src/store/index.js";
import type { Repository } from "../../src/store/index.js";
import { seedFromEnv, writeMixedImage } from "../support/images.js";
import { countingBackend, newRepository, tempDir } from "../support/repo.js";
import { LocalBackend } from "../../src/store/index.js";

const MiB = 1 << 20;

void describe("repository round trip (256 MiB image)", () => {
  let dir: string;
  let repo: Repository;
  let image: string;
  let backend: ReturnType<typeof countingBackend>;
  const seed = seedFromEnv();

  before(async () => {
    console.log(`seed ${seed} (replay with LIFEBOAT_SEED=${seed})`);
    dir = await tempDir();
    image = path.join(dir, "disk.img");
    await writeMixedImage(image, 256 * MiB, seed);
    backend = countingBackend(new LocalBackend(path.join(dir, "repo")));
    repo = await newRepository({ backend, chunkSize: MiB });
  });
  after(async () => {
    await repo.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("imports, exports byte-identical and sparse, and stores almost nothing the second time", async () => {
    const first = await importDisks(repo, { server: "db01", disks: [image] });
    assert.equal(first.stats.bytesRead, 256 * MiB);
    assert.ok(first.stats.zeroBytes >= 80 * MiB, "zero regions are not stored");
    const stats1 = await repositoryStats(repo);
    // A third of the image is random: it cannot be stored in less; text compresses to almost nothing.
    assert.ok(stats1.storedBytes.packs < 100 * MiB, `stored ${stats1.storedBytes.packs}`);

    const out = path.join(dir, "out.img");
    await exportDisk(repo, first.pit, 0, out);
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(image)), "export is byte-identical");
    const { blocks } = await fs.stat(out);
    assert.ok(blocks * 512 < 200 * MiB, `zero regions are holes (${blocks * 512} bytes allocated)`);

    backend.puts.length = 0;
    const second = await importDisks(repo, { server: "db01", disks: [image] });
    assert.equal(second.stats.newChunks, 0);
    assert.equal(second.pit.seq, first.pit.seq + 1);
    assert.equal(second.pit.disks[0]!.root, first.pit.disks[0]!.root, "same content, same block-map root");
    const dataPuts = backend.puts.filter((n) => n.startsWith("packs/") || n.startsWith("pages/"));
    assert.deepEqual(dataPuts, [], "an unchanged image stores no chunk and no page");
    assert.equal(backend.puts.filter((n) => n.startsWith("pits/")).length, 1);
  });

  void it("after 10 scattered 4 KiB writes the new PIT stores 10 chunks and a few pages", async () => {
    const fh = await fs.open(image, "r+");
    for (let k = 0; k < 10; k++) await fh.write(Buffer.alloc(4096, 0xa0 + k), 0, 4096, k * 25 * MiB + 12288);
    await fh.close();
    backend.puts.length = 0;
    const { pit, stats } = await importDisks(repo, { server: "db01", disks: [image] });
    assert.equal(stats.newChunks, 10);
    assert.ok(backend.puts.filter((n) => n.startsWith("pages/")).length <= 2, "256 chunks fit one leaf page");
    const out = path.join(dir, "out2.img");
    await exportDisk(repo, pit, 0, out);
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(image)));
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, true);
    assert.equal(report.pits, 3);
  });
});
