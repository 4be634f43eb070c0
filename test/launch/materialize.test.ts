/**
 * materializePit on disks of many runs (more than the shared hash buffers of
 * an export, so they are reused): each manifest hash is the SHA-256 of the
 * image file as sha256sum computes it, holes and a short last chunk
 * included; a corrupted chunk fails the call (no hang while later runs wait
 * for a buffer) naming the disk and byte range; a resumed call keeps the
 * finished disk and gives the rewritten one the right hash. hashPrefix reads
 * the same hash back, and fails on a file shorter than its disk.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { type LaunchManifest, hashPrefix, materializePit } from "../../src/launch/index.js";
import {
  type Pit,
  type Repository,
  entryLocation,
  importDisks,
  walkBlockMap,
} from "../../src/store/index.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;
const RUN = 4 << 20;

/** A sparse image of `runs` 4 MiB runs and a half chunk: some data in most runs, a few runs all zero. */
async function sparseImage(file: string, runs: number, seed: number): Promise<void> {
  const fh = await fs.open(file, "w");
  await fh.truncate(runs * RUN + CHUNK / 2);
  for (let r = 0; r < runs; r++) {
    if ((r + seed) % 5 === 0) continue; // a run with no chunk at all
    // Two chunks together, a gap, one more: a run with holes between its chunks.
    await fh.write(randomBytes(2 * CHUNK), 0, 2 * CHUNK, r * RUN + CHUNK);
    await fh.write(randomBytes(CHUNK), 0, CHUNK, r * RUN + 17 * CHUNK);
  }
  await fh.write(randomBytes(CHUNK / 2), 0, CHUNK / 2, runs * RUN); // the short last chunk
  await fh.close();
}

const sha256sum = (file: string) => execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0]!;

void describe("materializePit", () => {
  let dir: string;
  let repo: Repository;
  let pit: Pit;
  const images: string[] = [];

  before(async () => {
    dir = await tempDir();
    repo = await newRepository({ dir: path.join(dir, "repo"), chunkSize: CHUNK });
    for (const [i, runs] of [12, 10].entries()) {
      const image = path.join(dir, `src-${i}.img`);
      await sparseImage(image, runs, i);
      images.push(image);
    }
    pit = (await importDisks(repo, { server: "app01", disks: images })).pit;
  });
  after(async () => {
    await repo.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("writes each disk's SHA-256 in the manifest, equal to sha256sum of its image", async () => {
    const out = path.join(dir, "out");
    const r = await materializePit(repo, pit, out, "job-1");
    const manifest = JSON.parse(await fs.readFile(r.manifestPath, "utf8")) as LaunchManifest;
    for (const [i, d] of manifest.disks.entries()) {
      const image = path.join(out, d.file);
      assert.equal(d.sha256, sha256sum(image), `disk ${i}: the manifest's hash is the image's`);
      assert.equal(d.sha256, sha256sum(images[i]!), `disk ${i}: and the source's`);
      assert.equal(d.sizeBytes, (await fs.stat(images[i]!)).size);
      assert.equal(await hashPrefix(image, d.sizeBytes), d.sha256, "hashPrefix reads the same hash back");
      // Sparse: the runs' holes and zero runs were not written.
      const st = await fs.stat(image);
      assert.ok(
        st.blocks * 512 < st.size / 4,
        `disk ${i} is sparse (${st.blocks * 512} of ${st.size} bytes)`,
      );
    }
  });

  void it("fails on a corrupted chunk naming the disk and range, and a resumed call hashes the rewritten disk right", async () => {
    const entries: Buffer[] = [];
    await walkBlockMap(repo, pit.disks[1]!, (i, e) => void (entries[i] = Buffer.from(e)));
    // A chunk in disk 1's third data run: earlier runs may already wait for their hash when it fails.
    const slots = entries.flatMap((e, i) => (e ? [i] : []));
    const slot = slots[6]!;
    const loc = entryLocation(entries[slot]!);
    const packFile = path.join(dir, "repo", repo.packName(loc.pack));
    const original = await fs.readFile(packFile);
    const damaged = Buffer.from(original);
    damaged[loc.offset + Math.floor(loc.length / 2)]! ^= 0x40;
    await fs.chmod(packFile, 0o600);
    await fs.writeFile(packFile, damaged);
    const out = path.join(dir, "resumed");
    try {
      await assert.rejects(materializePit(repo, pit, out, "job-2"), (err: Error) => {
        assert.match(err.message, new RegExp(`disk 1 of PIT ${pit.id}`));
        assert.match(err.message, new RegExp(`bytes ${slot * CHUNK}-${(slot + 1) * CHUNK - 1}`));
        return true;
      });
      await assert.rejects(fs.stat(path.join(out, "manifest.json")), /ENOENT/, "no manifest");
      await assert.rejects(fs.stat(path.join(out, "disk-1.img")), /ENOENT/, "no partial disk");
    } finally {
      await fs.writeFile(packFile, original);
    }
    const lines: string[] = [];
    const again = await materializePit(repo, pit, out, "job-2", { log: (m) => lines.push(m) });
    assert.deepEqual(
      again.disks.map((d) => d.resumed),
      [true, false],
    );
    assert.ok(lines.some((l) => /disk 0: kept/.test(l)));
    const manifest = JSON.parse(await fs.readFile(again.manifestPath, "utf8")) as LaunchManifest;
    for (const [i, d] of manifest.disks.entries())
      assert.equal(d.sha256, sha256sum(path.join(out, d.file)), `disk ${i} after the resume`);
  });

  void it("hashPrefix hashes a prefix of any length, and fails when the file is shorter", async () => {
    const file = path.join(dir, "odd.bin");
    const data = randomBytes((9 << 20) + 1234);
    await fs.writeFile(file, data);
    for (const size of [0, 1, 4096, 5000, 8 << 20, data.length])
      assert.equal(
        await hashPrefix(file, size),
        createHash("sha256").update(data.subarray(0, size)).digest("hex"),
        `first ${size} bytes`,
      );
    await assert.rejects(hashPrefix(file, data.length + 4096), (err: Error & { code?: string }) => {
      assert.equal(err.code, "LAUNCH_IMAGE_SHORT");
      assert.match(err.message, new RegExp(`ends at byte ${data.length}`));
      return true;
    });
  });
});
