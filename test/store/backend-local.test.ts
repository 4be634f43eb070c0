import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, mkdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import type { ObjectInfo } from "../../src/store/backend.js";
import { alignedBuffer } from "../../src/base/aligned.js";
import { LocalBackend } from "../../src/store/backends/local.js";
import { backendContract } from "./backend-contract.js";

async function tempDir(): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), "lifeboat-local-"));
}

backendContract("LocalBackend", async () => {
  const dir = await tempDir();
  const backend = new LocalBackend(dir);
  return {
    backend,
    cleanup: async () => {
      await backend.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

void describe("LocalBackend interrupted puts", () => {
  let dir: string;
  let backend: LocalBackend;
  beforeEach(async () => {
    dir = await tempDir();
    backend = new LocalBackend(dir);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const list = async (prefix: string): Promise<ObjectInfo[]> => {
    const out: ObjectInfo[] = [];
    for await (const o of backend.list(prefix)) out.push(o);
    return out;
  };

  // A crash between writing the temporary file and renaming it leaves the file in tmp/.
  const leaveTemporary = async (name: string, ageMs: number): Promise<string> => {
    await mkdir(path.join(dir, "tmp"), { recursive: true });
    const file = path.join(dir, "tmp", name);
    await writeFile(file, "half an object");
    const when = new Date(Date.now() - ageMs);
    await utimes(file, when, when);
    return file;
  };

  void it("never lists the temporary file of an interrupted put", async () => {
    await backend.put("chunks/ab/abcd", Buffer.from("whole"));
    await leaveTemporary("0123456789abcdef.tmp", 0);
    assert.deepEqual(
      (await list("")).map((o) => o.name),
      ["chunks/ab/abcd"],
    );
    assert.deepEqual(await list("t"), []);
  });

  void it("never lists temporaries under a prefix that starts with tmp/", async () => {
    await leaveTemporary("0123456789abcdef.tmp", 0);
    assert.deepEqual(await list("tmp/"), []);
  });

  void it("sweepTemporaries removes old temporaries and keeps fresh ones", async () => {
    const old = await leaveTemporary("old.tmp", 2 * 3600_000);
    const fresh = await leaveTemporary("fresh.tmp", 0);
    const removed = await backend.sweepTemporaries(Date.now() - 3600_000);
    assert.equal(removed, 1);
    await assert.rejects(utimes(old, new Date(), new Date()), { code: "ENOENT" });
    await utimes(fresh, new Date(), new Date());
  });
});

void describe("LocalBackend ranged reads of packs", () => {
  let backend: LocalBackend;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    const dir = await tempDir();
    backend = new LocalBackend(dir);
    cleanup = async () => {
      await backend.close();
      await rm(dir, { recursive: true, force: true });
    };
  });
  afterEach(() => cleanup());

  const pack = (i: number) => `packs/${(i % 256).toString(16).padStart(2, "0")}/pack-${i}`;
  const bytesOf = (i: number) => Buffer.from(Array.from({ length: 4096 }, (_, k) => (i * 7 + k) & 0xff));

  void it("reads ranges of more packs than it keeps open, at once, each from its own file", async () => {
    const n = 150; // more than the files kept open
    for (let i = 0; i < n; i++) await backend.put(pack(i), bytesOf(i));
    for (let round = 0; round < 3; round++) {
      const reads = Array.from({ length: n }, (_, i) => {
        const offset = (i * 13 + round * 101) % 4000;
        return backend
          .get(pack(i), { offset, length: 64 })
          .then((got) => assert.deepEqual(got, bytesOf(i).subarray(offset, offset + 64), `pack ${i}`));
      });
      await Promise.all(reads);
    }
  });

  void it("a deleted pack is missing, not read through a file kept open", async () => {
    await backend.put(pack(1), bytesOf(1));
    assert.deepEqual(await backend.get(pack(1), { offset: 10, length: 5 }), bytesOf(1).subarray(10, 15));
    await backend.delete(pack(1));
    await assert.rejects(backend.get(pack(1), { offset: 10, length: 5 }), { code: "STORE_OBJECT_MISSING" });
    // Stored again under the name (as GC's restore from the trash does), it reads as stored now.
    await backend.put(pack(1), bytesOf(2));
    assert.deepEqual(await backend.get(pack(1), { offset: 10, length: 5 }), bytesOf(2).subarray(10, 15));
  });
});

void describe("LocalBackend durable directories", () => {
  // A durable put is synced file and directory; a directory the put had to create must be synced
  // into its own parent too, or a crash can lose the directory's entry and the object with it.
  void it("a durable put into directories it creates syncs each new directory's parent (strace)", async (t) => {
    const strace = spawnSync("strace", ["-V"]);
    if (strace.error) {
      t.skip("needs strace (Debian package strace) to watch which directories are synced");
      return;
    }
    const dir = await tempDir();
    try {
      const log = path.join(dir, "strace.log");
      const repo = path.join(dir, "repo");
      await mkdir(repo);
      const backend = new URL("../../src/store/backends/local.js", import.meta.url).href;
      const script = [
        `const { LocalBackend } = await import(${JSON.stringify(backend)});`,
        `const b = new LocalBackend(${JSON.stringify(repo)});`,
        `await b.put("heads/deep/x", Buffer.from("x"), { durable: true });`,
        `await b.put("heads/deep/y", Buffer.from("y"), { durable: true });`,
        `await b.close();`,
      ].join("\n");
      const r = spawnSync(
        "strace",
        [
          "-f",
          "-qq",
          "-y",
          "-e",
          "trace=fsync",
          "-o",
          log,
          process.execPath,
          "--input-type=module",
          "-e",
          script,
        ],
        { encoding: "utf8" },
      );
      assert.equal(r.status, 0, r.stderr);
      const synced = new Map<string, number>();
      for (const m of (await readFile(log, "utf8")).matchAll(/fsync\(\d+<([^>]+)>/g))
        synced.set(m[1]!, (synced.get(m[1]!) ?? 0) + 1);
      // heads/ and heads/deep/ were created: the root holds heads/, heads/ holds deep/.
      assert.ok(synced.has(repo), `the repository root is synced: ${[...synced.keys()].join(", ")}`);
      assert.ok(synced.has(path.join(repo, "heads")), "heads/ is synced");
      // deep/ holds the objects: synced after each rename.
      assert.equal(synced.get(path.join(repo, "heads", "deep")), 2);
      // The root is synced once for each directory made in it (tmp/ and heads/), not again for the second put.
      assert.equal(synced.get(repo), 2);
      assert.equal(synced.get(path.join(repo, "heads")), 1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

void describe("LocalBackend large puts", () => {
  // Pages of `file` in the page cache, from util-linux's fincore; undefined without it.
  const cachedPages = (file: string): number | undefined => {
    const r = spawnSync("fincore", ["--bytes", "--noheadings", "--output", "PAGES", file], {
      encoding: "utf8",
    });
    return r.status === 0 ? Number(r.stdout.trim()) : undefined;
  };
  void it("writes an aligned buffer's whole pages past the page cache, the rest through it, every byte right", async (t) => {
    const dir = await tempDir();
    const backend = new LocalBackend(dir);
    try {
      const size = (4 << 20) + 1000; // whole pages, then a tail shorter than one
      const aligned = alignedBuffer(size);
      randomBytes(size).copy(aligned);
      await backend.put("packs/aa/aligned", aligned);
      // A plain Buffer's address is not aligned: the same bytes, all through the page cache.
      const plain = Buffer.from(randomBytes(size + 1).subarray(1));
      await backend.put("packs/aa/plain", plain);
      assert.ok((await backend.get("packs/aa/aligned")).equals(aligned));
      assert.ok((await backend.get("packs/aa/plain")).equals(plain));

      const pages = cachedPages(path.join(dir, "packs", "aa", "aligned"));
      if (pages === undefined) {
        t.skip("needs fincore (Debian package util-linux) to see which pages are cached");
        return;
      }
      // get() above read it through the cache: a new put of the same bytes must leave just the tail there.
      await backend.put("packs/ab/fresh", aligned);
      assert.equal(cachedPages(path.join(dir, "packs", "ab", "fresh")), 1);
      assert.ok((await backend.get("packs/ab/fresh")).equals(aligned));
    } finally {
      await backend.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
