import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  BlockMapBuilder,
  ZERO_ENTRY,
  leafEntry,
  loadKnownIds,
  updateBlockMap,
  walkBlockMap,
} from "../../src/store/index.js";
import type { Repository } from "../../src/store/index.js";
import { countingBackend, newRepository } from "../support/repo.js";
import { MemoryBackend } from "../../src/store/index.js";

// The leaf entry of model chunk n: its id and a location made up from it.
const id = (n: number) => {
  if (n === 0) return ZERO_ENTRY;
  const h = createHash("sha256").update(String(n)).digest();
  return leafEntry(h, { pack: h.subarray(0, 16), offset: n * 1000, length: 500 + n });
};

async function build(repo: Repository, model: number[]) {
  const b = new BlockMapBuilder(repo, model.length);
  for (const n of model) await b.push(id(n));
  return b.finish();
}

// A model disk: an array of small numbers standing for chunk contents (0 = zero chunk).
const modelArb = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 20 })), {
  minLength: 0,
  maxLength: 300,
});

const seed = process.env.LIFEBOAT_SEED ? Number(process.env.LIFEBOAT_SEED) : undefined;
const params = { numRuns: 60, ...(seed !== undefined ? { seed } : {}) };

void describe("block map", () => {
  void it("reads back exactly what was built, for any content and a deep tree (fanout 4)", async () => {
    await fc.assert(
      fc.asyncProperty(modelArb, async (model) => {
        const repo = await newRepository({ pageFanout: 4 });
        const ref = await build(repo, model);
        const seen = new Map<number, Buffer>();
        await walkBlockMap(repo, ref, (i, cid) => void seen.set(i, Buffer.from(cid)));
        model.forEach((n, i) => assert.deepEqual(seen.get(i) ?? ZERO_ENTRY, id(n), `chunk ${i}`));
        assert.equal(
          ref.root === null,
          model.every((n) => n === 0),
        );
      }),
      params,
    );
  });

  void it("updating a map gives the same root as building the changed disk from scratch", async () => {
    await fc.assert(
      fc.asyncProperty(
        modelArb.filter((m) => m.length > 0),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 20 })), { maxLength: 30 }),
        async (model, edits) => {
          const repo = await newRepository({ pageFanout: 4 });
          const before = await build(repo, model);
          const changed = [...model];
          const changes = new Map<number, Buffer>();
          for (const [pos, n] of edits) {
            const i = pos % model.length;
            changed[i] = n;
            changes.set(i, id(n));
          }
          const updated = await updateBlockMap(repo, before, changes);
          const rebuilt = await build(repo, changed);
          assert.deepEqual(updated, rebuilt);
        },
      ),
      params,
    );
  });

  void it("a new map after 10 changed chunks of a 1 GiB disk writes a handful of pages", async () => {
    const backend = countingBackend(new MemoryBackend());
    const repo = await newRepository({ backend, chunkSize: 1 << 20 });
    const chunkCount = 1024; // 1 GiB of 1 MiB chunks
    const model = Array.from({ length: chunkCount }, (_, i) => (i % 3 === 0 ? 0 : i + 1));
    const base = await build(repo, model);
    backend.puts.length = 0;
    const changes = new Map<number, Buffer>();
    for (let k = 0; k < 10; k++) changes.set(k * 101 + 7, id(5000 + k));
    const next = await updateBlockMap(repo, base, changes);
    assert.notEqual(next.root, base.root);
    // 1024 entries in pages of 256: 4 leaves and a root; 10 changes touch every leaf at most once.
    assert.ok(backend.puts.length <= 5, `wrote ${backend.puts.length} pages`);
    assert.ok(backend.puts.every((n) => n.startsWith("pages/")));
  });

  void it("an update stores its new pages all at once and settles only once every one is stored", async () => {
    // 64 chunks in pages of 4: 16 leaves, 4 pages above them, a root. A change in every leaf.
    const held: { name: string; go(): void; fail(): void }[] = [];
    let holding = false;
    const inner = new MemoryBackend();
    const backend = {
      ...countingBackend(inner),
      put: (name: string, data: Uint8Array) =>
        holding && name.startsWith("pages/")
          ? new Promise<void>((resolve, reject) =>
              held.push({
                name,
                go: () => void inner.put(name, data).then(resolve, reject),
                fail: () => reject(Object.assign(new Error("disk full"), { code: "ENOSPC" })),
              }),
            )
          : inner.put(name, data),
    };
    const repo = await newRepository({ backend, pageFanout: 4 });
    const model = Array.from({ length: 64 }, (_, i) => i + 1);
    const base = await build(repo, model);
    const changed = model.map((n, i) => (i % 4 === 1 ? n + 100 : n));
    const changes = new Map(changed.flatMap((n, i) => (n !== model[i] ? [[i, id(n)] as const] : [])));
    const until = async (what: string, ok: () => boolean) => {
      for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 2));
      assert.ok(ok(), `${what} (${held.length} held)`);
    };

    holding = true;
    let settled = false;
    const update = updateBlockMap(repo, base, changes).finally(() => (settled = true));
    await until("all 21 new pages are being stored at once", () => held.length === 21);
    assert.equal(settled, false, "the update waits for its pages");
    for (const h of held.splice(0, 20)) h.go(); // the root's last
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(settled, false, "the update waits for its last page");
    held.pop()!.go();
    const next = await update;
    holding = false;
    assert.equal(next.root, (await build(repo, changed)).root, "the same map as built from scratch");
    const seen: number[] = [];
    await walkBlockMap(repo, next, (i) => void seen.push(i));
    assert.equal(seen.length, 64, "every page of the new map can be read");

    // A page that fails to store fails the update, once every other write of it has ended.
    const again = new Map([...changes].map(([i]) => [i, id(i + 500)] as const));
    settled = false;
    holding = true;
    const failing = updateBlockMap(repo, next, again).finally(() => (settled = true));
    failing.catch(() => undefined);
    await until("the second update's pages are being stored", () => held.length === 21);
    held.shift()!.fail();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(settled, false, "no failure while other writes of the update still run");
    for (const h of held.splice(0)) h.go();
    await assert.rejects(failing, { code: "ENOSPC" });
  });

  void it("the known set of two maps that share pages reads each shared page once, and misses nothing", async () => {
    const repo = await newRepository({ backend: new MemoryBackend(), chunkSize: 1 << 20 });
    const model = Array.from({ length: 1024 }, (_, i) => (i % 3 === 0 ? 0 : i + 1));
    const base = await build(repo, model);
    const changes = new Map<number, Buffer>();
    for (let k = 0; k < 10; k++) changes.set(k * 20 + 7, id(5000 + k)); // all in the first leaf
    const next = await updateBlockMap(repo, base, changes);
    const getPage = repo.getPage.bind(repo);
    let reads = 0;
    repo.getPage = (pageId) => {
      reads++;
      return getPage(pageId);
    };
    const known = await loadKnownIds(repo, [[base], [next]]);
    const knownReads = reads;
    // The union of both maps' chunks and pages, as a full walk of each finds them.
    const chunks = new Set<string>();
    const pages = new Set<string>();
    for (const ref of [base, next])
      await walkBlockMap(
        repo,
        ref,
        (_i, e) => void chunks.add(e.subarray(0, 32).toString("latin1")),
        (p) => void pages.add(p.toString("latin1")),
      );
    const knownChunks = [...known.chunks.entries()].map((e) => e.subarray(0, 32).toString("latin1"));
    assert.equal(knownChunks.length, chunks.size);
    assert.deepEqual(new Set(knownChunks), chunks);
    assert.deepEqual(new Set([...known.pages.ids()].map((p) => p.toString("latin1"))), pages);
    known.close();
    // base: a root and 4 leaves; next shares the 3 leaves it did not change: its root and one leaf more.
    assert.equal(knownReads, 7, `${knownReads} page reads for two maps of 5 pages each`);
  });

  void it("all-zero disks and all-zero subtrees store no pages", async () => {
    const backend = countingBackend(new MemoryBackend());
    const repo = await newRepository({ backend, pageFanout: 4 });
    const ref = await build(
      repo,
      Array.from({ length: 100 }, () => 0),
    );
    assert.equal(ref.root, null);
    assert.equal(backend.puts.filter((n) => n.startsWith("pages/")).length, 0);
    const sparse = await build(repo, [...Array.from({ length: 63 }, () => 0), 1]);
    // Only the path to the one non-zero chunk: depth 3 with fanout 4 for 64 chunks.
    assert.equal(sparse.depth, 3);
    assert.equal(backend.puts.filter((n) => n.startsWith("pages/")).length, 3);
  });
});
