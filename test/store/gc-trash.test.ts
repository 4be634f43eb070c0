import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import type { Backend } from "../../src/store/index.js";
import {
  MemoryBackend,
  type Repository,
  collectGarbage,
  exportDisk,
  forgetPits,
  importDisks,
  parseRetention,
  verifyRepository,
  writePit,
} from "../../src/store/index.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const MiB = 1 << 20;
const HOUR = 3_600_000;

/** A backend that runs `hook` once, just before the first delete of a name it selects. */
function hookedBackend(
  inner: Backend,
  select: (name: string) => boolean,
  hook: () => Promise<void>,
): Backend {
  let fired = false;
  return {
    properties: inner.properties,
    put: (n, d) => inner.put(n, d),
    get: (n, r) => inner.get(n, r),
    stat: (n) => inner.stat(n),
    list: (p) => inner.list(p),
    delete: async (n) => {
      if (!fired && select(n)) {
        fired = true;
        await hook();
      }
      await inner.delete(n);
    },
    close: () => inner.close(),
  };
}

void describe("garbage collection with a trash", () => {
  let dir: string;
  let imgA: string;
  let imgB: string;
  before(async () => {
    dir = await tempDir();
    imgA = path.join(dir, "a.img");
    imgB = path.join(dir, "b.img");
    await writeMixedImage(imgA, 4 * MiB, 1, MiB);
    await writeMixedImage(imgB, 4 * MiB, 2, MiB);
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  const same = async (repo: Repository, pitId: string, image: string) => {
    const pit = (await import("../../src/store/index.js")).readPit(repo, pitId);
    const out = path.join(dir, `out-${Math.random().toString(36).slice(2)}.img`);
    await exportDisk(repo, await pit, 0, out);
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(image)), `PIT ${pitId} exports ${image}`);
  };

  void it("with no writer, unreferenced data goes to the trash, then is deleted by a later run", async () => {
    const clock = new ManualClock(1_000 * HOUR);
    const repo = await newRepository({ backend: new MemoryBackend(clock), clock });
    const a = await importDisks(repo, { server: "s1", disks: [imgA] });
    clock.advance(HOUR);
    const b = await importDisks(repo, { server: "s1", disks: [imgB] });
    clock.advance(HOUR);
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [a.pit.id] });
    const first = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.ok(first.trashed > 0 && first.deleted === 0, JSON.stringify(first));
    clock.advance(HOUR);
    const second = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal(second.deleted, first.trashed);
    assert.equal(second.inTrash, 0);
    const report = await verifyRepository(repo, { readData: true });
    assert.equal(report.ok, true);
    assert.equal(report.unreferencedObjects, 0);
    await same(repo, b.pit.id, imgB);
  });

  void it("a writer that stores the same data again while GC removes it loses nothing", async () => {
    const clock = new ManualClock(1_000 * HOUR);
    const mem = new MemoryBackend(clock);
    const holder: { repo?: Repository } = {};
    let late: Awaited<ReturnType<typeof importDisks>> | undefined;
    // Just as GC deletes the first pack it trashed, a writer that started after GC looked at the
    // locks imports image A again: it stores A's chunks anew (no PIT it can see names them), in
    // packs of its own, so nothing it writes has the name of an object GC is removing.
    const backend = hookedBackend(
      mem,
      (n) => n.startsWith("packs/"),
      async () => {
        late = await importDisks(holder.repo!, { server: "s2", disks: [imgA] });
      },
    );
    const repo = await newRepository({ backend, clock });
    holder.repo = repo;
    const a = await importDisks(repo, { server: "s1", disks: [imgA] });
    clock.advance(HOUR);
    await importDisks(repo, { server: "s1", disks: [imgB] });
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [a.pit.id] });
    clock.advance(HOUR);
    await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.ok(late, "the concurrent import ran");
    await same(repo, late.pit.id, imgA);
    assert.equal((await verifyRepository(repo, { readData: true })).ok, true);
    // The trash holds only A's old objects; the late PIT survives every later run.
    clock.advance(HOUR);
    const next = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal(next.restored, 0, JSON.stringify(next));
    assert.ok(next.deleted > 0, JSON.stringify(next));
    for (let i = 0; i < 3; i++) {
      clock.advance(HOUR);
      await collectGarbage(repo, { safetyMarginMs: 0 });
    }
    await same(repo, late.pit.id, imgA);
  });

  void it("trashed objects are kept while a writer that started before them runs", async () => {
    const clock = new ManualClock(1_000 * HOUR);
    const repo = await newRepository({ backend: new MemoryBackend(clock), clock });
    const a = await importDisks(repo, { server: "s1", disks: [imgA] });
    clock.advance(HOUR);
    await importDisks(repo, { server: "s1", disks: [imgB] });
    clock.advance(HOUR);
    const { acquireLock } = await import("../../src/store/locks.js");
    const writer = await acquireLock(repo, "writer", "a long replication session");
    clock.advance(HOUR);
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [a.pit.id] });
    clock.advance(HOUR);
    const r1 = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.ok(r1.trashed > 0);
    clock.advance(HOUR);
    await writer.refresh();
    const r2 = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal(r2.deleted, 0, "the writer may still reference them");
    assert.match(r2.waitingReason ?? "", /writer/);
    await writer.release();
    clock.advance(HOUR);
    const r3 = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.equal(r3.deleted, r1.trashed);
  });

  void it("forgetting puts back trashed objects a PIT references before deleting PITs", async () => {
    const clock = new ManualClock(1_000 * HOUR);
    const repo = await newRepository({ backend: new MemoryBackend(clock), clock });
    const a = await importDisks(repo, { server: "s1", disks: [imgA] });
    clock.advance(HOUR);
    await importDisks(repo, { server: "s1", disks: [imgB] });
    await forgetPits(repo, parseRetention("1m:1m"), { pits: [a.pit.id] });
    clock.advance(HOUR);
    const r = await collectGarbage(repo, { safetyMarginMs: 0 });
    assert.ok(r.trashed > 0);
    // A writer that learned A's block map before it was trashed makes a PIT of it without storing
    // anything (as a replicator that read A's PIT before it was forgotten does).
    const again = await writePit(repo, {
      server: "s3",
      timeMs: clock.now(),
      consistency: "none",
      disks: a.pit.disks,
      labels: {},
    });
    await forgetPits(repo, parseRetention("1m:1m"), { server: "s1" });
    const stats = await verifyRepository(repo);
    assert.equal(stats.inTrash, 0, "forget put A's chunks back");
    clock.advance(HOUR);
    await collectGarbage(repo, { safetyMarginMs: 0 });
    await same(repo, again.id, imgA);
  });
});
