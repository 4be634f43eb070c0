/**
 * Export (restore of a PIT's disk) from a local directory repository, where
 * the workers read the packs themselves: images come out byte-identical and
 * sparse, several disks share one worker pool, a damaged chunk fails the
 * export naming the disk, PIT and byte range and leaves no file behind, and
 * a block device gets zeros written where the disk has zero chunks; a pack
 * cut short fails the chunks past its end.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { OBJECT_OVERHEAD, ObjectKind } from "../../src/store/codec.js";
import {
  type Pit,
  type Repository,
  WorkerPool,
  entryId,
  entryLocation,
  exportDisk,
  importDisks,
  walkBlockMap,
} from "../../src/store/index.js";
import { requireCapability } from "../support/capabilities.js";
import { writeMixedImage } from "../support/images.js";
import { createLoopDisk } from "../support/loop-disk.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;
/** 9 MiB and a half chunk: three runs, the last one short, and a short last chunk. */
const SIZE = (9 << 20) + CHUNK / 2;

void describe("export from a local repository", () => {
  let dir: string;
  let repoDir: string;
  let repo: Repository;
  let pit: Pit;
  const images: string[] = [];

  before(async () => {
    dir = await tempDir();
    repoDir = path.join(dir, "repo");
    repo = await newRepository({ dir: repoDir, chunkSize: CHUNK });
    for (let i = 0; i < 3; i++) {
      const image = path.join(dir, `disk${i}.img`);
      await writeMixedImage(image, SIZE + i * CHUNK, 7 + i, 1 << 20);
      images.push(image);
    }
    pit = (await importDisks(repo, { server: "app01", disks: images })).pit;
    assert.ok(repo.backend.properties.localRoot, "a directory repository: workers read its packs");
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("computes the SHA-256 of the disk as written, zero runs included, without reading it back", async () => {
    // Zero runs at the start, in the middle and at the end of the disk, and data between.
    const image = path.join(dir, "holes.img");
    const size = 13 * (4 << 20) + CHUNK / 2;
    const fh = await fs.open(image, "w");
    await fh.truncate(size);
    for (const at of [4 << 20, (4 << 20) + 3 * CHUNK, 9 << 20, 30 << 20])
      await fh.write(randomBytes(CHUNK), 0, CHUNK, at);
    await fh.close();
    const holes = (await importDisks(repo, { server: "holes", disks: [image] })).pit;
    const out = path.join(dir, "holes-out.img");
    const r = await exportDisk(repo, holes, 0, out, { sha256: true });
    const want = createHash("sha256")
      .update(await fs.readFile(image))
      .digest("hex");
    assert.equal(r.sha256, want);
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(image)));
  });

  void it("stops when its signal fires and leaves no file behind", async () => {
    const out = path.join(dir, "aborted.img");
    const stop = new AbortController();
    await assert.rejects(
      exportDisk(repo, pit, 0, out, {
        signal: stop.signal,
        onProgress: () => stop.abort(new Error("terminated by an operator")),
      }),
      /terminated by an operator/,
    );
    await assert.rejects(fs.stat(out), /ENOENT/);
    await assert.rejects(fs.stat(`${out}.lifeboat-partial`), /ENOENT/);
  });

  let entries: Buffer[] | undefined;
  const entriesOf = async (of: Pit) => {
    const all: Buffer[] = [];
    await walkBlockMap(repo, of.disks[0]!, (i, e) => void (all[i] = Buffer.from(e)));
    return all;
  };

  /** Where chunk `index` of disk 0 is stored. */
  const locate = async (index: number, of: Pit = pit) => {
    const entry = (entries ??= await entriesOf(of))[index];
    assert.ok(entry, `chunk ${index} is stored`);
    const loc = entryLocation(entry);
    return {
      name: repo.chunkName(entryId(entry)),
      file: path.join(repoDir, repo.packName(loc.pack)),
      offset: loc.offset,
      length: loc.length,
    };
  };

  void it("every disk of a PIT at once through one shared pool: identical, sparse, pool left open", async () => {
    const pool = new WorkerPool(repo.keys, repo.config.compression.level);
    try {
      const outs = images.map((_, i) => path.join(dir, `out${i}.img`));
      const results = await Promise.all(outs.map((out, i) => exportDisk(repo, pit, i, out, { pool })));
      for (const [i, out] of outs.entries()) {
        assert.ok((await fs.readFile(out)).equals(await fs.readFile(images[i]!)), `disk ${i} is identical`);
        const st = await fs.stat(out);
        assert.equal(st.size, SIZE + i * CHUNK);
        // A third of each image is zero stripes: they stay holes.
        assert.ok(
          st.blocks * 512 <= st.size * 0.75,
          `disk ${i} is sparse (${st.blocks * 512} of ${st.size})`,
        );
        assert.ok(results[i]!.dataBytes < st.size && results[i]!.chunks > 0);
        await assert.rejects(fs.stat(`${out}.lifeboat-partial`));
      }
      // The pool belongs to the caller: still usable after the exports.
      const again = path.join(dir, "again.img");
      await exportDisk(repo, pit, 0, again, { pool });
      assert.ok((await fs.readFile(again)).equals(await fs.readFile(images[0]!)));
    } finally {
      await pool.close();
    }
  });

  void it("a worker reads a chunk from its pack and checks it; a missing pack is its errno, damage is damage", async () => {
    const pool = new WorkerPool(repo.keys, repo.config.compression.level);
    try {
      const c = await locate(100);
      const id = entryId((entries ??= await entriesOf(pit))[100]!);
      const plain = await pool.decodeFrom({ path: c.file, offset: c.offset, length: c.length }, c.name, id);
      assert.ok(createHash("sha256").update(plain).digest().equals(id), "the chunk's bytes, as its id says");
      await assert.rejects(
        pool.decodeFrom({ path: `${c.file}.gone`, offset: c.offset, length: c.length }, c.name, id),
        (err: NodeJS.ErrnoException) => err.code === "ENOENT",
      );
      // One byte short of the object: the tag does not verify.
      await assert.rejects(
        pool.decodeFrom({ path: c.file, offset: c.offset, length: c.length - 1 }, c.name, id),
        (err: NodeJS.ErrnoException) => typeof err.code === "string" && err.code.startsWith("STORE_"),
      );
    } finally {
      await pool.close();
    }
  });

  void it("a worker keeps at most 32 packs open, none when idle, and reads a pack moved away while open", async () => {
    const pool = new WorkerPool(repo.keys, repo.config.compression.level, 1);
    const links = path.join(dir, "links");
    await fs.mkdir(links, { recursive: true });
    const openOnes = async () => {
      let n = 0;
      for (const fd of await fs.readdir("/proc/self/fd"))
        if ((await fs.readlink(`/proc/self/fd/${fd}`).catch(() => "")).startsWith(links)) n++;
      return n;
    };
    try {
      const c = await locate(100);
      const id = entryId((entries ??= await entriesOf(pit))[100]!);
      const at = (p: string) => ({ path: p, offset: c.offset, length: c.length });
      const first = path.join(links, "first");
      await fs.copyFile(c.file, first);
      const plain = await pool.decodeFrom(at(first), c.name, id);
      // GC moves a pack to the trash: a descriptor still open reads the same bytes.
      await fs.rename(first, `${first}.trash`);
      assert.ok((await pool.decodeFrom(at(first), c.name, id)).equals(plain));
      for (let i = 0; i < 40; i++) {
        const link = path.join(links, `p${i}`);
        await fs.link(c.file, link);
        assert.ok((await pool.decodeFrom(at(link), c.name, id)).equals(plain));
      }
      assert.equal(await openOnes(), 32, "the 32 packs read last stay open");
      // The moved pack left the cache with its descriptor: its old name is gone now.
      await assert.rejects(
        pool.decodeFrom(at(first), c.name, id),
        (err: NodeJS.ErrnoException) => err.code === "ENOENT",
      );
      // Many reads of one pack at once share its descriptor.
      const burst = await Promise.all(
        Array.from({ length: 64 }, () => pool.decodeFrom(at(path.join(links, "p0")), c.name, id)),
      );
      assert.ok(burst.every((b) => b.equals(plain)));
      assert.equal(await openOnes(), 32);
      // Idle for two seconds: every pack closes, so that one GC deletes frees its space (waited
      // for up to 20 s, so that a loaded machine's late timer does not fail the test).
      for (let waited = 0; (await openOnes()) > 0 && waited < 20_000; waited += 250)
        await new Promise((r) => setTimeout(r, 250));
      assert.equal(await openOnes(), 0, "an idle worker keeps no pack open");
      assert.ok((await pool.decodeFrom(at(path.join(links, "p1")), c.name, id)).equals(plain));
      assert.equal(await openOnes(), 1);
    } finally {
      await pool.close();
    }
    assert.equal(await openOnes(), 0, "a closed pool leaves no pack open");
  });

  void it("a flipped bit in a chunk fails the export naming disk, PIT and byte range; no file is left", async () => {
    // Chunk 100 lies in the second run (64 chunks a run), inside a random stripe (6-7 MiB).
    const victim = await locate(100);
    const original = await fs.readFile(victim.file);
    try {
      const bad = Buffer.from(original);
      bad[victim.offset + (victim.length >> 1)]! ^= 0x20;
      await fs.writeFile(victim.file, bad);
      const out = path.join(dir, "bad.img");
      await assert.rejects(exportDisk(repo, pit, 0, out), (e: Error & { code?: string }) => {
        assert.equal(e.code, "STORE_OBJECT_CORRUPT");
        assert.match(e.message, new RegExp(`^disk 0 of PIT ${pit.id} \\(app01\\)`));
        assert.match(e.message, new RegExp(`chunk 100 at bytes ${100 * CHUNK}-${101 * CHUNK - 1}`));
        assert.match(e.message, new RegExp(victim.name));
        return true;
      });
      await assert.rejects(fs.stat(out), "no image is left behind");
      await assert.rejects(fs.stat(`${out}.lifeboat-partial`), "no partial image is left behind");
    } finally {
      await fs.writeFile(victim.file, original);
    }
  });

  /** Replaces chunk `index`'s stored object with a well-formed one of its size holding random bytes. */
  const forge = async (index: number) => {
    const victim = await locate(index);
    const original = await fs.readFile(victim.file);
    const forged = repo.codec.encode(
      victim.name,
      ObjectKind.chunk,
      randomBytes(victim.length - OBJECT_OVERHEAD),
    );
    assert.equal(forged.length, victim.length);
    const bad = Buffer.from(original);
    forged.copy(bad, victim.offset);
    await fs.writeFile(victim.file, bad);
    return () => fs.writeFile(victim.file, original);
  };

  const mismatchAt = (from: number, to: number, what: RegExp) => (e: Error & { code?: string }) => {
    assert.equal(e.code, "STORE_CHUNK_MISMATCH");
    assert.match(e.message, new RegExp(`at bytes ${from}-${to}: `));
    assert.match(e.message, what);
    return true;
  };

  void it("a chunk that decrypts to other bytes is a mismatch naming its range, the short last chunk too", async () => {
    // Chunk 144 is the disk's last, half a chunk long, in a random stripe and in the third (short) run.
    const undo = await forge(144);
    try {
      await assert.rejects(
        exportDisk(repo, pit, 0, path.join(dir, "forged.img")),
        mismatchAt(144 * CHUNK, SIZE - 1, /does not match its id/),
      );
    } finally {
      await undo();
    }
  });

  void it("a chunk that decrypts to fewer bytes than its place holds is a mismatch", async () => {
    // Chunk 16 is the first of a text stripe: compressed, so random bytes of its stored size are
    // fewer. Text chunks repeat, so other places share its object: any of them may fail first.
    const shared: number[] = [];
    const at16 = await locate(16);
    for (let i = 0; i < 145; i++) {
      const l = await locate(i).catch(() => undefined);
      if (l && l.file === at16.file && l.offset === at16.offset) shared.push(i);
    }
    const undo = await forge(16);
    try {
      await assert.rejects(
        exportDisk(repo, pit, 0, path.join(dir, "short.img")),
        (e: Error & { code?: string }) => {
          assert.equal(e.code, "STORE_CHUNK_MISMATCH");
          const m = /chunk (\d+) at bytes (\d+)-(\d+): /.exec(e.message);
          assert.ok(m, e.message);
          const i = Number(m[1]);
          assert.ok(shared.includes(i), `chunk ${i} holds the damaged object (${shared.join(", ")})`);
          assert.deepEqual([Number(m[2]), Number(m[3])], [i * CHUNK, (i + 1) * CHUNK - 1]);
          assert.match(e.message, /decrypts to \d+ bytes where its place holds 65536/);
          return true;
        },
      );
    } finally {
      await undo();
    }
  });

  void it("a missing pack is STORE_OBJECT_MISSING naming the range; a pack in the trash is still read", async () => {
    const victim = await locate(3);
    const original = await fs.readFile(victim.file);
    const trashed = path.join(repoDir, "trash", path.relative(repoDir, victim.file));
    await fs.mkdir(path.dirname(trashed), { recursive: true });
    await fs.rename(victim.file, trashed);
    try {
      const out = path.join(dir, "from-trash.img");
      await exportDisk(repo, pit, 0, out);
      assert.ok((await fs.readFile(out)).equals(await fs.readFile(images[0]!)));
      await fs.rm(trashed);
      await assert.rejects(
        exportDisk(repo, pit, 0, path.join(dir, "missing.img")),
        (e: Error & { code?: string }) => {
          assert.equal(e.code, "STORE_OBJECT_MISSING");
          assert.match(e.message, /^disk 0 of PIT .* chunk \d+ at bytes \d+-\d+/);
          return true;
        },
      );
    } finally {
      await fs.rm(trashed, { force: true });
      await fs.writeFile(victim.file, original);
    }
  });

  void it("a pack cut short inside a chunk fails that chunk naming its range (the cut off a page boundary)", async () => {
    const victim = await locate(100);
    const original = await fs.readFile(victim.file);
    try {
      await fs.truncate(victim.file, victim.offset + 4097);
      await assert.rejects(
        exportDisk(repo, pit, 0, path.join(dir, "cut.img")),
        (e: Error & { code?: string }) => {
          assert.match(e.code ?? "", /^STORE_OBJECT_(TRUNCATED|CORRUPT|EMPTY)$/);
          assert.match(e.message, /^disk 0 of PIT .* chunk \d+ at bytes \d+-\d+/);
          return true;
        },
      );
    } finally {
      await fs.writeFile(victim.file, original);
    }
  });

  void it("to a block device: old data is replaced, zero chunks included", async (t) => {
    if (!requireCapability(t, "loop")) return;
    const repo2 = await newRepository({ dir: path.join(dir, "repo2"), chunkSize: CHUNK });
    const { pit: pit2 } = await importDisks(repo2, { server: "app02", disks: [images[0]!] });
    const disk = await createLoopDisk({ sizeMiB: 10, ext4: false });
    try {
      // The device starts full of non-zero bytes, which the export must replace, zeros included.
      await fs.writeFile(disk.device, Buffer.alloc(disk.sizeBytes, 0xa5));
      await exportDisk(repo2, pit2, 0, disk.device, { overwrite: true });
      const got = await fs.readFile(disk.device);
      const want = await fs.readFile(images[0]!);
      assert.ok(got.subarray(0, want.length).equals(want), "the device holds the disk");
      assert.ok(
        got.subarray(want.length).every((b) => b === 0xa5),
        "bytes past the disk are untouched",
      );
    } finally {
      await disk.cleanup();
    }
  });
});
