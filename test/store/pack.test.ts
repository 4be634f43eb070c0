import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, describe, it } from "node:test";
import { ObjectKind } from "../../src/store/codec.js";
import {
  MemoryBackend,
  PackWriter,
  entryLocation,
  importDisks,
  readPackIndex,
  walkBlockMap,
} from "../../src/store/index.js";
import { packStretches } from "../../src/store/pack.js";
import { writeMixedImage } from "../support/images.js";
import { countingBackend, newRepository, tempDir } from "../support/repo.js";

const MiB = 1 << 20;

void describe("packs", () => {
  let dir: string | undefined;
  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  void it("reuses stored packs' buffers under a stream of packs, two stored at once", async () => {
    const buffers = new Set<ArrayBufferLike>();
    // Stores that take a while, so that two overlap as they do on a disk.
    const backend = countingBackend(new MemoryBackend(), async (n, d) => {
      if (n.startsWith("packs/")) buffers.add(d.buffer);
      await new Promise((r) => setTimeout(r, 5));
    });
    const repo = await newRepository({ backend });
    const packs = new PackWriter(repo, 1 * MiB, 2);
    const plain = randomBytes(64 * 1024);
    // Rounds of 20 to 47 chunks, each ended as a replicator's checkpoint ends one (finish seals the
    // pack being filled and waits for every store): full packs and a shorter last one each round.
    let i = 0;
    for (let round = 0; round < 12; round++) {
      const end = i + 20 + ((round * 13) % 28);
      for (; i < end; i++) {
        const id = createHash("sha256").update(plain).update(String(i)).digest(); // distinct ids, same bytes
        await packs.add(id, repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, plain));
      }
      await packs.finish();
    }
    assert.ok(packs.packs >= 30, `${packs.packs} packs`);
    // One pack filled while two are stored: three buffers serve them all, and one more at most
    // while a store's buffer comes back.
    assert.ok(buffers.size <= 4, `${buffers.size} buffers for ${packs.packs} packs`);
  });

  void it("holds many chunks per object, each readable at its location, with an index of its own", async () => {
    const backend = countingBackend(new MemoryBackend());
    const repo = await newRepository({ backend });
    const packs = new PackWriter(repo, 1 * MiB);
    const written: { id: Buffer; plain: Buffer; loc: Awaited<ReturnType<PackWriter["add"]>> }[] = [];
    for (let i = 0; i < 100; i++) {
      const plain = randomBytes(64 * 1024);
      const id = createHash("sha256").update(plain).digest();
      const loc = await packs.add(id, repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, plain));
      written.push({ id, plain, loc });
    }
    await packs.finish();
    // 100 incompressible 64 KiB chunks in packs sealed at 1 MiB: 16 chunks a pack, 7 packs.
    assert.equal(packs.packs, 7);
    assert.equal(backend.puts.filter((n) => n.startsWith("packs/")).length, 7);
    for (const w of written) {
      const data = await repo.getChunkObject(w.loc);
      assert.deepEqual(repo.decodeVerified(repo.chunkName(w.id), ObjectKind.chunk, w.id, data), w.plain);
    }
    const first = repo.packName(written[0]!.loc.pack);
    const index = await readPackIndex(repo, first);
    const inFirst = written.filter((w) => repo.packName(w.loc.pack) === first);
    assert.deepEqual(
      index.map((e) => [e.id.toString("hex"), e.offset, e.length]),
      inFirst.map((w) => [w.id.toString("hex"), w.loc.offset, w.loc.length]),
    );
  });

  void it("holds a chunk larger than the pack target, and an index larger than the growth step, all readable", async () => {
    const repo = await newRepository({ backend: new MemoryBackend() });
    const packs = new PackWriter(repo, 256 * 1024);
    const written: { id: Buffer; plain: Buffer; loc: Awaited<ReturnType<PackWriter["add"]>> }[] = [];
    const add = async (plain: Buffer) => {
      const id = createHash("sha256").update(plain).digest();
      const loc = await packs.add(id, repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, plain));
      written.push({ id, plain, loc });
    };
    // A small chunk, then one of 3 MiB: its pack's buffer grows past the target and the step.
    await add(randomBytes(1000));
    await add(randomBytes(3 * MiB));
    // Then a pack of 40,000 one-byte chunks under a target that they never reach before the end:
    // its index (40 bytes an entry) is larger than the step the buffer grows by.
    const tiny = new PackWriter(repo, 64 * MiB);
    for (let i = 0; i < 40_000; i++) {
      const plain = Buffer.from([i & 0xff, i >> 8, i >> 16]);
      const id = createHash("sha256").update(plain).digest();
      written.push({
        id,
        plain,
        loc: await tiny.add(id, repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, plain)),
      });
    }
    await packs.finish();
    await tiny.finish();
    assert.equal(packs.packs, 1);
    assert.equal(tiny.packs, 1);
    for (const w of written) {
      const data = await repo.getChunkObject(w.loc);
      assert.deepEqual(repo.decodeVerified(repo.chunkName(w.id), ObjectKind.chunk, w.id, data), w.plain);
    }
    const index = await readPackIndex(repo, repo.packName(written.at(-1)!.loc.pack));
    assert.equal(index.length, 40_000);
  });

  void it("a chunk's bytes moved to another chunk's place fail authentication", async () => {
    const repo = await newRepository({ backend: new MemoryBackend() });
    const packs = new PackWriter(repo);
    const a = Buffer.alloc(1000, 1);
    const b = Buffer.alloc(1000, 2);
    const idA = createHash("sha256").update(a).digest();
    const idB = createHash("sha256").update(b).digest();
    const locA = await packs.add(idA, repo.codec.encode(repo.chunkName(idA), ObjectKind.chunk, a));
    await packs.add(idB, repo.codec.encode(repo.chunkName(idB), ObjectKind.chunk, b));
    await packs.finish();
    const bytesOfA = await repo.getChunkObject(locA);
    assert.throws(() => repo.decodeVerified(repo.chunkName(idB), ObjectKind.chunk, idB, bytesOfA), {
      code: "STORE_OBJECT_CORRUPT",
    });
  });

  void it("a failed store surfaces at finish, and the next add refuses", async () => {
    const backend = new MemoryBackend();
    const repo = await newRepository({ backend });
    const packs = new PackWriter(repo, 100);
    backend.put = () => Promise.reject(Object.assign(new Error("disk full"), { code: "STORE_NO_SPACE" }));
    const id = createHash("sha256").update("x").digest();
    const obj = repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, Buffer.alloc(200, 7));
    await packs.add(id, obj); // seals at once (over 100 bytes); the store fails in the background
    await assert.rejects(packs.finish(), /disk full/);
    await assert.rejects(packs.add(id, obj), /disk full/);
  });

  void it("stretches group neighbours in one pack and keep others apart", () => {
    const items = [
      { pack: "p2", offset: 0, length: 10, n: 1 },
      { pack: "p1", offset: 10, length: 5, n: 2 },
      { pack: "p1", offset: 0, length: 10, n: 3 },
      { pack: "p1", offset: 20, length: 5, n: 4 },
    ];
    assert.deepEqual(
      packStretches(items).map((g) => g.map((i) => i.n)),
      [[3, 2], [4], [1]],
    );
  });

  void it("an import stores a 32 MiB image in a handful of packs, laid out in disk order", async () => {
    dir = await tempDir();
    const image = path.join(dir, "disk.img");
    await writeMixedImage(image, 32 * MiB, 7, MiB);
    const backend = countingBackend(new MemoryBackend());
    const repo = await newRepository({ backend });
    const { pit, stats } = await importDisks(repo, { server: "s1", disks: [image], packBytes: 4 * MiB });
    assert.ok(stats.newChunks > 100, `${stats.newChunks} new chunks`);
    const packPuts = backend.puts.filter((n) => n.startsWith("packs/"));
    assert.equal(packPuts.length, stats.packs);
    assert.ok(stats.packs <= Math.ceil(stats.storedBytes / (4 * MiB)) + 1, `${stats.packs} packs`);
    // Neighbouring chunks of the disk are neighbours in a pack, so a reader needs few reads.
    const locs: { pack: string; offset: number; length: number }[] = [];
    await walkBlockMap(repo, pit.disks[0]!, (_i, e) => {
      const l = entryLocation(e);
      locs.push({ pack: repo.packName(l.pack), offset: l.offset, length: l.length });
    });
    assert.ok(
      packStretches(locs).length <= stats.packs * 2,
      `${packStretches(locs).length} stretches for ${stats.packs} packs`,
    );
  });
});
