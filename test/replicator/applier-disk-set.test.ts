/**
 * A server whose disk set changes between two streams (agent/disk-changes.ts):
 * a disk named for the first time starts empty beside the others, a disk no
 * longer named is in no later PIT, and the PITs made before keep it, through
 * garbage collection too.
 */
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ReplicaApplier, type ReplicaDisk } from "../../src/replicator/applier.js";
import {
  type Pit,
  type Repository,
  collectGarbage,
  exportDisk,
  readHead,
  verifyRepository,
} from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const MiB = 1 << 20;
const CHUNK = 64 * 1024;

void describe("replica applier: disks added and removed", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  const exported = async (repo: Repository, pit: Pit, disk: number) => {
    const out = path.join(dir, `out-${pit.id}-${disk}.img`);
    await exportDisk(repo, pit, disk, out);
    const data = await fs.readFile(out);
    await fs.rm(out);
    return data;
  };
  const open = (repo: Repository, disks: ReplicaDisk[]) =>
    ReplicaApplier.open(repo, "db02", disks, { packBytes: 2 * MiB });

  void it("a new disk starts empty, a dropped one leaves later PITs and stays in earlier ones", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r1"), chunkSize: CHUNK });
    const rand = prng(7);
    const d0 = { index: 0, sizeBytes: 2 * MiB, source: "/dev/vdb" };
    const d1 = { index: 1, sizeBytes: 3 * MiB, source: "/dev/vdc" };
    const disk0 = randomBuffer(rand, d0.sizeBytes);
    const disk1 = randomBuffer(rand, d1.sizeBytes);

    const a = await open(repo, [d0]);
    await a.writeChunks(0, 0, disk0);
    const p1 = await a.makePit({ seq: 1, consistency: "crash" });
    await a.close();

    // Disk 1 joins: it is empty (zeros) until written; disk 0 is as it was.
    const b = await open(repo, [d0, d1]);
    const p2empty = await b.makePit({ seq: 2, consistency: "crash" });
    assert.deepEqual(
      p2empty.disks.map((d) => d.index),
      [0, 1],
    );
    assert.ok((await exported(repo, p2empty, 1)).equals(Buffer.alloc(d1.sizeBytes)));
    await b.writeChunks(1, 0, disk1);
    const p2 = await b.makePit({ seq: 3, consistency: "crash" });
    assert.ok((await exported(repo, p2, 0)).equals(disk0));
    assert.ok((await exported(repo, p2, 1)).equals(disk1));
    await b.close();

    // Disk 0 leaves: no later head or PIT holds it; writing to it is refused.
    const c = await open(repo, [d1]);
    await assert.rejects(c.writeBytes(0, 0, Buffer.alloc(10)), { code: "REPLICA_NO_SUCH_DISK" });
    await c.writeBytes(1, 4096, Buffer.alloc(4096, 0x55));
    const p3 = await c.makePit({ seq: 4, consistency: "crash" });
    await c.close();
    assert.deepEqual(
      p3.disks.map((d) => d.index),
      [1],
    );
    assert.deepEqual(
      (await readHead(repo, "db02"))!.disks.map((d) => d.index),
      [1],
    );
    const want1 = Buffer.from(disk1);
    want1.fill(0x55, 4096, 8192);
    assert.ok((await exported(repo, p3, 1)).equals(want1));

    // The earlier PITs keep disk 0, and so its chunks, through GC.
    await collectGarbage(repo, { safetyMarginMs: 0 });
    await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);
    assert.ok((await exported(repo, p1, 0)).equals(disk0));
    assert.ok((await exported(repo, p2, 0)).equals(disk0));
  });
});
