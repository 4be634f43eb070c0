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
      const all = Buffer.concat(frames.filter((f): f is Buffer => f !== undefined));
      const spans: number[] = [];
      let at = 0;
      for (const f of frames) {
        if (!f) spans.push(-1, 0);
        else {
          spans.push(at, f.length);
          at += f.length;
        }
      }
      const entries = await ingest.run(data, { data: Buffer.from(all), spans });
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

  void it("moves a frames buffer of its own to the worker and lends the same memory again", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const ingest = new ChunkIngest(repo, await loadKnownIds(repo, []));
    try {
      const plain = [chunk(11), chunk(12), chunk(13)];
      const frames = plain.map((p) => zstd(p, 19));
      const all = Buffer.concat(frames);
      const data = ingest.takeBuffer(plain.length * CHUNK);
      plain.forEach((p, i) => p.copy(data, i * CHUNK));
      const f = ingest.takeFramesBuffer(all.length);
      all.copy(f);
      const spans: number[] = [];
      let at = 0;
      for (const fr of frames) {
        spans.push(at, fr.length);
        at += fr.length;
      }
      const entries = await ingest.run(data, { data: f, spans, own: true });
      assert.equal(f.buffer.byteLength, 0, "the buffer moved to the worker: no copy was made");
      const next = ingest.takeFramesBuffer(all.length);
      assert.ok(next.equals(all), "the next frames buffer is the same memory, back from the worker");
      await ingest.finish();
      await repo.flush();
      for (const [i, e] of entries.entries()) {
        assert.equal(entryLocation(e).length, OBJECT_OVERHEAD + frames[i]!.length, `chunk ${i}: its frame`);
        assert.deepEqual(await repo.readChunk(e), plain[i], `chunk ${i} reads back`);
      }
    } finally {
      await ingest.close();
    }
  });
});
