import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { after, before, describe, it } from "node:test";
import { Compressor } from "zstd-napi";
import { OBJECT_OVERHEAD } from "../../src/store/codec.js";
import { ChunkIngest, entryLocation, loadKnownIds } from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;

/** Half random, half a repeated byte: compresses to about half. */
function chunk(seed: number): Buffer {
  const b = randomBuffer(prng(seed), CHUNK);
  b.fill(0x41, CHUNK / 2);
  return b;
}

function zstd(data: Buffer, level: number): Buffer {
  const c = new Compressor();
  c.setParameters({ compressionLevel: level });
  return c.compress(data);
}

void describe("ingest with the writer's own zstd frames", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  void it("stores a good frame as it is, ignores bad ones, and every chunk reads back verified", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const ingest = new ChunkIngest(repo, await loadKnownIds(repo, []));
    try {
      const plain = [chunk(1), chunk(2), chunk(3), chunk(4), chunk(5)];
      // Level 19 makes frames of another size than the repository's level 1 would: which one was stored shows.
      const good = zstd(plain[0]!, 19);
      const twoFrames = Buffer.concat([
        zstd(plain[1]!.subarray(0, CHUNK / 2), 19),
        zstd(plain[1]!.subarray(CHUNK / 2), 19),
      ]);
      const otherChunk = zstd(plain[0]!, 19); // decompresses to chunk 0, not chunk 2
      const frames = [good, twoFrames, otherChunk, undefined, zstd(plain[4]!, 19)];
      const data = Buffer.allocUnsafeSlow(plain.length * CHUNK);
      plain.forEach((p, i) => p.copy(data, i * CHUNK));
      const entries = await ingest.run(data, { frames });
      await ingest.finish();
      await repo.flush();
      const size = (i: number) => entryLocation(entries[i]!).length;
      const level1 = (i: number) => OBJECT_OVERHEAD + zstd(plain[i]!, 1).length;
      assert.equal(size(0), OBJECT_OVERHEAD + good.length, "a good frame is stored as it came");
      assert.equal(size(4), OBJECT_OVERHEAD + frames[4]!.length);
      assert.notEqual(size(0), level1(0), "and the sizes tell the two apart");
      // Not one frame of the chunk's length, or no frame: compressed here as always.
      assert.equal(size(1), level1(1), "two frames");
      assert.equal(size(3), level1(3), "no frame");
      // A frame of other content with the right length would be caught by the id check on every
      // read; the writer vouches for its frames (the replicator decompressed each to get the run).
      for (const [i, e] of entries.entries()) {
        if (i === 2) continue;
        assert.deepEqual(await repo.readChunk(e), plain[i], `chunk ${i} reads back`);
      }
      await assert.rejects(repo.readChunk(entries[2]!), { code: "STORE_CHUNK_MISMATCH" });
    } finally {
      await ingest.close();
    }
  });
});

void describe("ingest runs in the worker pool's slabs", () => {
  void it("encodes a run back over its slab, which serves the next run; another buffer is copied, not taken", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const ingest = new ChunkIngest(repo, await loadKnownIds(repo, []));
    try {
      const first = ingest.takeBuffer(3 * CHUNK);
      [chunk(11), chunk(12), chunk(13)].forEach((c, i) => c.copy(first, i * CHUNK));
      const expected = Buffer.from(first);
      const a = await ingest.run(first);
      const second = ingest.takeBuffer(2 * CHUNK);
      assert.ok(second.buffer instanceof SharedArrayBuffer);
      assert.equal(second.buffer, first.buffer, "the first run's slab serves the next");
      // The slab now holds the first run's encoded chunks, not its plaintext.
      assert.notDeepEqual(Buffer.from(first.buffer, 0, 3 * CHUNK), expected);
      const own = Buffer.concat([chunk(14), chunk(15)]);
      const ownCopy = Buffer.from(own);
      const b = await ingest.run(own);
      assert.deepEqual(own, ownCopy, "a buffer not from takeBuffer is left as it was");
      await ingest.finish();
      await repo.flush();
      for (const [i, e] of a.entries())
        assert.deepEqual(await repo.readChunk(e), expected.subarray(i * CHUNK, (i + 1) * CHUNK));
      for (const [i, e] of b.entries())
        assert.deepEqual(await repo.readChunk(e), ownCopy.subarray(i * CHUNK, (i + 1) * CHUNK));
    } finally {
      await ingest.close();
    }
  });

  void it("keeps a bounded set of slabs over many runs in flight, with and without frames, every chunk right", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const ingest = new ChunkIngest(repo, await loadKnownIds(repo, []));
    const slabs = new Set<ArrayBufferLike>();
    const written: { entries: Promise<Buffer[]>; plain: Buffer[] }[] = [];
    try {
      const inFlight: Promise<unknown>[] = [];
      for (let r = 0; r < 40; r++) {
        const n = 1 + ((r * 7) % 13);
        const plain = Array.from({ length: n }, (_, i) => chunk(1000 * r + i));
        // Every third run brings frames of some chunks; some of those runs' buffers had no room
        // kept for them (the pool then moves the run into a larger slab).
        const frames = r % 3 === 0 ? plain.map((p, i) => (i % 2 === 0 ? zstd(p, 3) : undefined)) : undefined;
        const room = frames && r % 2 === 0 ? frames.reduce((s, f) => s + (f?.length ?? 0), 0) : 0;
        const buf = ingest.takeBuffer(n * CHUNK, room);
        slabs.add(buf.buffer);
        plain.forEach((p, i) => p.copy(buf, i * CHUNK));
        const entries = ingest.run(buf, frames && { frames });
        written.push({ entries, plain });
        inFlight.push(entries);
        if (inFlight.length >= 4) await inFlight.shift();
      }
      await Promise.all(inFlight);
      await ingest.finish();
      await repo.flush();
      for (const { entries, plain } of written) {
        for (const [i, e] of (await entries).entries()) assert.deepEqual(await repo.readChunk(e), plain[i]);
      }
      // At most 4 runs in flight and 8 slabs spare at a time, and a few runs moved to a larger slab.
      assert.ok(slabs.size <= 16, `${slabs.size} slabs for 40 runs`);
      assert.equal(
        ingest.stats.newChunks,
        written.reduce((s, w) => s + w.plain.length, 0),
      );
    } finally {
      await ingest.close();
    }
  });
});
