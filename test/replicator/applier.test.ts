import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ReplicaApplier } from "../../src/replicator/applier.js";
import {
  LocalBackend,
  type Pit,
  Repository,
  collectGarbage,
  exportDisk,
  forgetPits,
  parseRetention,
  readHead,
  verifyRepository,
} from "../../src/store/index.js";
import { prng, randomBuffer, writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const MiB = 1 << 20;
const CHUNK = 64 * 1024;
const SIZE = 8 * MiB + 12_345; // the last chunk is short

void describe("replica applier", () => {
  let dir: string;
  let model: Buffer;
  before(async () => {
    dir = await tempDir();
    const img = path.join(dir, "source.img");
    await writeMixedImage(img, SIZE, 11, MiB);
    model = await fs.readFile(img);
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  const exported = async (repo: Repository, pit: Pit, disk = 0) => {
    const out = path.join(dir, `out-${pit.id}-${disk}.img`);
    await exportDisk(repo, pit, disk, out);
    const data = await fs.readFile(out);
    await fs.rm(out);
    return data;
  };

  const open = (repo: Repository, size = SIZE) =>
    ReplicaApplier.open(repo, "db01", [{ index: 0, sizeBytes: size, source: "/dev/vdb" }], {
      packBytes: 2 * MiB,
    });

  void it("whole chunks, then small writes and discards, reach the PIT byte for byte", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r1"), chunkSize: CHUNK });
    const applier = await open(repo);
    // Initial sync in 1 MiB pieces, issued without waiting.
    const writes: Promise<void>[] = [];
    for (let off = 0; off < SIZE; off += MiB)
      writes.push(applier.writeChunks(0, off, model.subarray(off, off + MiB)));
    await Promise.all(writes);
    const first = await applier.makePit({ seq: 40, consistency: "crash" });
    assert.deepEqual(await exported(repo, first), model);
    assert.equal(applier.appliedSeq, 40);

    // Scattered 4 KiB writes (one across a chunk boundary), a discard of a whole chunk and of part of one.
    const expect = Buffer.from(model);
    const rand = prng(3);
    const apply = async (offset: number, data: Buffer) => {
      data.copy(expect, offset);
      await applier.writeBytes(0, offset, data);
    };
    for (let k = 0; k < 20; k++) await apply(Math.floor(rand() * (SIZE - 4096)), randomBuffer(rand, 4096));
    await apply(3 * CHUNK - 1000, randomBuffer(rand, 4096));
    await apply(5 * CHUNK, Buffer.alloc(CHUNK));
    await apply(7 * CHUNK + 100, Buffer.alloc(5000));
    await apply(SIZE - 10, randomBuffer(rand, 10));
    const before = applier.stats.storedBytes;
    const second = await applier.makePit({ seq: 41, consistency: "filesystem" });
    assert.deepEqual(await exported(repo, second), expect);
    // 24 changed chunks at most, each at most a chunk compressed and encrypted.
    assert.ok(applier.stats.storedBytes - before <= 25 * (CHUNK + 64), "stores about the chunks touched");
    assert.equal(second.consistency, "filesystem");
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);
    await applier.close();
  });

  void it("a restart resumes from the last checkpoint and loses nothing checkpointed", async () => {
    const repoDir = path.join(dir, "r2");
    const repo = await newRepository({ dir: repoDir, chunkSize: CHUNK });
    const a = await open(repo);
    await a.writeChunks(0, 0, model.subarray(0, 4 * MiB));
    await a.checkpoint(7);
    await a.writeChunks(0, 4 * MiB, model.subarray(4 * MiB)); // never checkpointed
    await a.close();

    const again = await Repository.open(new LocalBackend(repoDir), repo.keyFile);
    const b = await open(again);
    assert.equal(b.appliedSeq, 7, "the sender resumes after frame 7");
    await b.writeChunks(0, 4 * MiB, model.subarray(4 * MiB)); // resent
    const pit = await b.makePit({ seq: 9, consistency: "none" });
    assert.deepEqual(await exported(again, pit), model);
    assert.equal((await readHead(again, "db01"))?.appliedSeq, 9);
    await b.close();
  });

  void it("GC keeps what only the head references", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r3"), chunkSize: CHUNK });
    const a = await open(repo);
    await a.writeChunks(0, 0, model);
    const pit = await a.makePit({ seq: 1, consistency: "crash" });
    await a.writeBytes(0, 0, Buffer.alloc(4096, 0x77));
    await a.checkpoint(2);
    await a.close();
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [pit.id] });
    await collectGarbage(repo, { safetyMarginMs: 0 });
    await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);
    const b = await open(repo);
    const next = await b.makePit({ seq: 3, consistency: "crash" });
    const expect = Buffer.from(model);
    expect.fill(0x77, 0, 4096);
    assert.deepEqual(await exported(repo, next), expect);
    await b.close();
  });

  void it("a disk that grew keeps its data and reads zeros beyond", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r4"), chunkSize: CHUNK });
    const a = await open(repo);
    await a.writeChunks(0, 0, model);
    await a.checkpoint(1);
    await a.close();
    const b = await open(repo, SIZE + 3 * MiB);
    await b.writeBytes(0, SIZE + MiB, Buffer.alloc(100, 9));
    const pit = await b.makePit({ seq: 2, consistency: "crash" });
    const expect = Buffer.concat([model, Buffer.alloc(3 * MiB)]);
    expect.fill(9, SIZE + MiB, SIZE + MiB + 100);
    assert.deepEqual(await exported(repo, pit), expect);
    await b.close();
  });

  void it("a chunk the replica holds is written by its id alone; chunk ids follow patches", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r5"), chunkSize: CHUNK });
    const a = await open(repo);
    await a.writeChunks(0, 0, model.subarray(0, CHUNK));
    const id = await a.chunkId(0, 0);
    assert.equal(id.toString("hex"), createHash("sha256").update(model.subarray(0, CHUNK)).digest("hex"));
    assert.equal(a.holds(id), true);
    await a.writeKnownChunk(0, 10 * CHUNK, id);
    await a.writeBytes(0, 10 * CHUNK + 5, Buffer.from("patched"));
    const expect = Buffer.from(model.subarray(0, CHUNK));
    expect.write("patched", 5);
    assert.deepEqual(await a.chunkId(0, 10 * CHUNK), createHash("sha256").update(expect).digest());
    const unknown = createHash("sha256").update("never stored").digest();
    assert.equal(a.holds(unknown), false);
    await assert.rejects(a.writeKnownChunk(0, 0, unknown), { code: "REPLICA_UNKNOWN_CHUNK" });
    const pit = await a.makePit({ seq: 1, consistency: "none" });
    const image = await exported(repo, pit);
    assert.deepEqual(image.subarray(10 * CHUNK, 11 * CHUNK), expect);
    assert.deepEqual(image.subarray(0, CHUNK), model.subarray(0, CHUNK));
    await a.close();
  });

  void it("refuses writes that are not whole chunks, past the end, or to an unknown disk", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const a = await open(repo);
    await assert.rejects(a.writeChunks(0, 100, Buffer.alloc(CHUNK)), { code: "REPLICA_BAD_WRITE" });
    await assert.rejects(a.writeChunks(0, 0, Buffer.alloc(CHUNK + 1)), { code: "REPLICA_BAD_WRITE" });
    await assert.rejects(a.writeBytes(0, SIZE - 1, Buffer.alloc(2)), { code: "REPLICA_BAD_WRITE" });
    await assert.rejects(a.writeBytes(3, 0, Buffer.alloc(2)), { code: "REPLICA_NO_SUCH_DISK" });
    await a.close();
  });
});
