import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { it } from "node:test";
import { PREFIX } from "../../src/store/names.js";
import {
  type Backend,
  MemoryBackend,
  importDisks,
  listPits,
  verifyRepository,
  writeHead,
} from "../../src/store/index.js";
import { newRepository, tempDir } from "../support/repo.js";

/**
 * verify on a repository a replicator writes to: a head (or PIT) written
 * while verify runs names only objects stored before it, and verify must not
 * report those as missing. Here the write happens the moment verify lists the
 * heads, which is when it hurt: listing the objects first and the roots
 * after found the new root's objects missing from the listing.
 */
void it("verify of a live repository reports no damage for what a replicator writes meanwhile", async () => {
  const dir = await tempDir("lifeboat-verify-live-");
  try {
    const inner = new MemoryBackend();
    let hook: (() => Promise<void>) | undefined;
    const backend: Backend = {
      properties: inner.properties,
      put: (n, d) => inner.put(n, d),
      get: (n, r) => inner.get(n, r),
      stat: (n) => inner.stat(n),
      async *list(prefix) {
        if (prefix === PREFIX.heads && hook) {
          const h = hook;
          hook = undefined;
          await h();
        }
        yield* inner.list(prefix);
      },
      delete: (n) => inner.delete(n),
      close: () => inner.close(),
    };
    const repo = await newRepository({ backend });
    const disk = async (name: string) => {
      const f = path.join(dir, name);
      await fs.writeFile(f, randomBytes(1 << 20));
      return f;
    };
    await importDisks(repo, { server: "before", disks: [await disk("a.img")], consistency: "crash" });
    // The "replicator": new chunks, pages and then the head naming them.
    hook = async () => {
      const { pit } = await importDisks(repo, {
        server: "live",
        disks: [await disk("b.img")],
        consistency: "crash",
      });
      await writeHead(repo, {
        server: "live",
        disks: pit.disks,
        appliedSeq: 1,
        timeMs: Date.now(),
        session: "s",
      });
    };
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(hook, undefined, "the write happened during verify");
    assert.deepEqual(report.damage, []);
    assert.equal(report.ok, true);
    await repo.close();
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

void it("listing PITs while retention forgets one lists the others instead of failing", async () => {
  const dir = await tempDir("lifeboat-list-live-");
  try {
    const inner = new MemoryBackend();
    const gone: { name?: string } = {};
    const backend: Backend = {
      properties: inner.properties,
      put: (n, d) => inner.put(n, d),
      get: (n, r) => inner.get(n, r),
      stat: (n) => inner.stat(n),
      async *list(prefix) {
        const all = [];
        for await (const o of inner.list(prefix)) all.push(o);
        // Forgotten after the listing saw it, before it is read.
        if (prefix === PREFIX.pits && gone.name) await inner.delete(gone.name);
        yield* all;
      },
      delete: (n) => inner.delete(n),
      close: () => inner.close(),
    };
    const repo = await newRepository({ backend });
    const f = path.join(dir, "a.img");
    await fs.writeFile(f, randomBytes(256 << 10));
    const a = (await importDisks(repo, { server: "s", disks: [f], consistency: "crash" })).pit;
    const b = (await importDisks(repo, { server: "s", disks: [f], consistency: "crash" })).pit;
    gone.name = `${PREFIX.pits}${a.id}`;
    assert.deepEqual(
      (await listPits(repo, { server: "s" })).map((p) => p.id),
      [b.id],
    );
    await repo.close();
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
