/**
 * Garbage collection while imports run. The dangerous case: an importer
 * stores (or skips storing) a chunk that a just-forgotten PIT referenced,
 * while GC removes that chunk as unreferenced. Whatever the interleaving, no
 * PIT may end up naming an object that is gone (GC moves unreferenced objects
 * to trash/ first, where readers still find them, and deletes them from there
 * in a later run).
 *
 * Images are built from numbered 64 KiB blocks (random, compressible or
 * zero), so images of one "family" share most chunks and, where a whole
 * block-map page's range is unchanged, pages too.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import type { Backend, ObjectInfo } from "../../src/store/backend.js";
import { ObjectKind } from "../../src/store/codec.js";
import { type LockRecord, acquireLock, listLocks } from "../../src/store/locks.js";
import {
  DEFAULT_RETENTION,
  type GcReport,
  type KeyFile,
  LocalBackend,
  type Pit,
  PackWriter,
  Repository,
  collectGarbage,
  entryLocation,
  exportDisk,
  forgetPits,
  generateKeyFile,
  importDisks,
  listPits,
  newRepositoryId,
  repositoryStats,
  verifyRepository,
  walkBlockMap,
} from "../../src/store/index.js";
import { mix, prngU32 as prng, seedFromEnv } from "../support/images.js";

const KiB = 1024;
const CHUNK = 64 * KiB;
const DAY = 86_400_000;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Seeded randomness: one seed per run, printed; LIFEBOAT_SEED=<seed> replays it.

const SEED = seedFromEnv();
console.log(`gc-concurrent: seed ${SEED} (replay with LIFEBOAT_SEED=${SEED})`);

// ---------------------------------------------------------------------------
// Images made of numbered blocks.

/** Fills one 64 KiB block: every 7th block number is zeros, the rest random or compressible. */
function fillBlock(out: Buffer, seed: number, block: number): void {
  if (block % 7 === 0) {
    out.fill(0);
    return;
  }
  const next = prng(mix(seed, block));
  const words = new Uint32Array(out.buffer, out.byteOffset, out.length / 4);
  const compressible = block % 3 === 0;
  for (let i = 0; i < words.length; i++)
    words[i] = compressible ? (next() & 0x03030303) | 0x61616161 : next();
}

interface Image {
  file: string;
  sha256: string;
  blocks: number[];
}

async function writeImage(file: string, seed: number, blocks: number[]): Promise<Image> {
  const buf = Buffer.alloc(blocks.length * CHUNK);
  blocks.forEach((b, i) => fillBlock(buf.subarray(i * CHUNK, (i + 1) * CHUNK), seed, b));
  await writeFile(file, buf);
  return { file, sha256: sha256(buf), blocks };
}

/** The next image of a family: `share` of its first 200 blocks kept, the rest fresh; later blocks unchanged. */
function mutate(blocks: number[], next: () => number, fresh: () => number, share: number): number[] {
  return blocks.map((b, i) => (i < 200 && next() / 2 ** 32 > share ? fresh() : b));
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

// ---------------------------------------------------------------------------
// Repository helpers.

interface Sandbox {
  dir: string;
  key: KeyFile;
  repo: Repository;
  /** Another handle on the same directory, as a second process would have. */
  open(opts?: {
    clockOffsetMs?: number;
    gate?: (verb: GatedVerb, name: string) => boolean;
  }): Promise<Repository>;
}

async function sandbox(root: string, name: string): Promise<Sandbox> {
  const dir = path.join(root, name);
  const repoDir = path.join(dir, "repo");
  const key = generateKeyFile(newRepositoryId());
  const repo = await Repository.create(new LocalBackend(repoDir), key, { chunkSize: CHUNK });
  return {
    dir,
    key,
    repo,
    open: async (opts = {}) => {
      const local = new LocalBackend(repoDir);
      const backend = opts.gate ? new GatedBackend(local, opts.gate) : local;
      const offset = opts.clockOffsetMs ?? 0;
      return Repository.open(
        backend,
        key,
        offset ? { clock: { now: () => Date.now() + offset, sleep } } : {},
      );
    },
  };
}

async function list(backend: Backend, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const o of backend.list(prefix)) out.push(o);
  return out;
}

async function reachableNames(repo: Repository): Promise<Set<string>> {
  const reachable = new Set<string>();
  for (const pit of await listPits(repo)) {
    for (const d of pit.disks) {
      await walkBlockMap(
        repo,
        d,
        (_i, e) => void reachable.add(repo.packName(entryLocation(e).pack)),
        (id) => void reachable.add(repo.pageName(id)),
      );
    }
  }
  return reachable;
}

/** Chunks and pages (outside the trash) that no PIT reaches, computed independently of gc.ts. */
async function unreferencedNames(repo: Repository): Promise<string[]> {
  const reachable = await reachableNames(repo);
  const live = [...(await list(repo.backend, "packs/")), ...(await list(repo.backend, "pages/"))];
  return live
    .map((o) => o.name)
    .filter((n) => !reachable.has(n))
    .sort();
}

/** Original names of the objects in GC's trash. */
async function trashed(repo: Repository): Promise<string[]> {
  return (await list(repo.backend, "trash/")).map((o) => o.name.slice("trash/".length)).sort();
}

async function assertVerifies(repo: Repository, what: string): Promise<void> {
  const report = await verifyRepository(repo, { readData: true });
  assert.ok(
    report.ok,
    `${what}: verify found damage (seed ${SEED}):\n${JSON.stringify(report.damage, null, 2)}`,
  );
}

/** Exports every PIT's disk 0 and compares it with the image it was made from. */
async function assertPitsRestore(
  repo: Repository,
  images: Map<string, Image>,
  outDir: string,
): Promise<void> {
  const pits = await listPits(repo);
  assert.deepEqual(pits.map((p) => p.id).sort(), [...images.keys()].sort(), "the PITs in the repository");
  for (const pit of pits) {
    const out = path.join(outDir, `export-${pit.id}.img`);
    await exportDisk(repo, pit, 0, out);
    assert.equal(
      sha256(await readFile(out)),
      images.get(pit.id)!.sha256,
      `PIT ${pit.id} exports other bytes`,
    );
    await rm(out);
  }
}

async function importImage(repo: Repository, server: string, image: Image): Promise<Pit> {
  return (await importDisks(repo, { server, disks: [image.file] })).pit;
}

/** Forgets the named PITs as `store forget` does, retried while a gc run holds the GC lock. */
async function forget(repo: Repository, ids: string[]): Promise<void> {
  for (;;) {
    try {
      const report = await forgetPits(repo, DEFAULT_RETENTION, { pits: ids });
      assert.equal(report.forgotten, ids.length);
      return;
    } catch (err) {
      if (!isLifeboatError(err, "STORE_LOCKED")) throw err;
      await sleep(2);
    }
  }
}

const gc = (repo: Repository, safetyMarginMs = 0): Promise<GcReport> =>
  collectGarbage(repo, { safetyMarginMs });

/** Runs gc (no writer running) until nothing is unreferenced and the trash is empty; returns how many runs it took. */
async function gcUntilClean(repo: Repository, maxRuns = 3): Promise<number> {
  for (let run = 1; run <= maxRuns; run++) {
    await sleep(2); // a zero safety margin still wants objects strictly older than the run
    await gc(repo);
    if ((await unreferencedNames(repo)).length === 0 && (await trashed(repo)).length === 0) return run;
  }
  assert.fail(
    `gc did not converge in ${maxRuns} runs: ${(await trashed(repo)).length} object(s) still in the trash`,
  );
}

/** A pid that belonged to a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", ""]);
  assert.ok(r.pid);
  return r.pid;
}

/** Stores an unreferenced chunk (in a pack of its own), as a writer does before its PIT exists; returns the pack. */
async function putOrphanChunk(repo: Repository, content: string): Promise<string> {
  const plain = Buffer.from(content);
  const id = createHash("sha256").update(plain).digest();
  const packs = new PackWriter(repo);
  const loc = await packs.add(id, repo.codec.encode(repo.chunkName(id), ObjectKind.chunk, plain));
  await packs.finish();
  return repo.packName(loc.pack);
}

// ---------------------------------------------------------------------------

let root = "";
before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), "lifeboat-gc-concurrent-"));
});
after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

void describe("gc concurrent with imports", () => {
  const ROUNDS = 3;
  for (let round = 0; round < ROUNDS; round++) {
    const seed = mix(SEED, round);
    void it(`round ${round} (seed ${SEED}): no PIT loses an object while gc runs in a loop`, async (t) => {
      const sb = await sandbox(root, `round-${round}`);
      const writer = sb.repo;
      const gcRepo = await sb.open();
      const next = prng(seed);
      let fresh = 1;
      const freshBlock = () => fresh++;

      // Two disjoint families of 320-block images (two leaf pages each); each
      // image shares 60-90% of its first 200 blocks with the previous one of
      // its family, and all of its last 120.
      const families = [0, 1].map(() => Array.from({ length: 320 }, freshBlock));
      const images: Image[] = [];
      for (let i = 0; i < 6; i++) {
        const family = i % 2;
        if (i >= 2)
          families[family] = mutate(families[family]!, next, freshBlock, 0.6 + 0.3 * (next() / 2 ** 32));
        images.push(await writeImage(path.join(sb.dir, `image-${i}.img`), seed, families[family]!));
      }

      // GC runs back to back, with short random pauses, until the imports are done.
      let stop = false;
      const gcStats = { runs: 0, trashed: 0, restored: 0, deleted: 0, locked: 0 };
      const gcLoop = (async () => {
        const pause = prng(mix(seed, 1));
        while (!stop) {
          try {
            const r = await gc(gcRepo);
            gcStats.runs++;
            gcStats.trashed += r.trashed;
            gcStats.restored += r.restored;
            gcStats.deleted += r.deleted;
          } catch (err) {
            if (!isLifeboatError(err, "STORE_LOCKED")) throw err;
            gcStats.locked++;
          }
          await sleep(pause() % 15);
        }
      })();

      // Import the images in order; before importing image i (i >= 2), forget
      // the PIT of image i - 2: the previous one of the same family, with which
      // image i shares most of its chunks.
      const pits: Pit[] = [];
      try {
        for (let i = 0; i < images.length; i++) {
          if (i >= 2) await forget(writer, [pits[i - 2]!.id]);
          await sleep(next() % 40);
          pits.push(await importImage(writer, `family-${i % 2}`, images[i]!));
        }
      } finally {
        stop = true;
        await gcLoop;
      }
      t.diagnostic(`gc: ${JSON.stringify(gcStats)}`);
      assert.ok(gcStats.runs >= 3, "gc ran repeatedly during the imports");
      assert.ok(
        gcStats.trashed > 0 && gcStats.deleted > 0,
        "gc removed objects of forgotten PITs during the imports",
      );

      await assertVerifies(writer, "after the concurrent imports");
      const expected = new Map(pits.slice(4).map((p, i) => [p.id, images[4 + i]!]));
      await assertPitsRestore(writer, expected, sb.dir);

      // With no writer left, gc removes everything unreferenced and nothing referenced.
      await gcUntilClean(gcRepo);
      await assertVerifies(writer, "after the final gc");
      await assertPitsRestore(writer, expected, sb.dir);
      await gcRepo.close();
      await writer.close();
    });
  }
});

void describe("gc rules", () => {
  /** A repository with PITs of three images: two of server "srv" (the older forgotten) and one of "other". */
  async function withForgottenPit(name: string) {
    const sb = await sandbox(root, name);
    const seed = mix(SEED, 1000);
    const blocks = (n: number, f: (i: number) => number) => Array.from({ length: n }, (_, i) => f(i));
    const a = await writeImage(
      path.join(sb.dir, "a.img"),
      seed,
      blocks(64, (i) => i + 1),
    );
    const b = await writeImage(
      path.join(sb.dir, "b.img"),
      seed,
      blocks(64, (i) => (i < 32 ? i + 1 : i + 100)),
    );
    const c = await writeImage(
      path.join(sb.dir, "c.img"),
      seed,
      blocks(48, (i) => i + 200),
    );
    const pa = await importImage(sb.repo, "srv", a);
    const pb = await importImage(sb.repo, "srv", b);
    const pc = await importImage(sb.repo, "other", c);
    // Two days later, the default policy keeps only each server's latest PIT.
    const later = await sb.open({ clockOffsetMs: 2 * DAY });
    const forgot = await forgetPits(later, DEFAULT_RETENTION);
    await later.close();
    assert.equal(forgot.forgotten, 1);
    assert.deepEqual(
      forgot.servers.find((s) => s.server === "srv")?.forget.map((f) => f.id),
      [pa.id],
    );
    const unreferenced = await unreferencedNames(sb.repo);
    assert.ok(unreferenced.length > 0, "forgetting a PIT left unreferenced objects");
    await sleep(20); // gc with a zero safety margin removes objects written strictly before its run
    const images = new Map([
      [pb.id, b],
      [pc.id, c],
    ]);
    return { ...sb, unreferenced, forgottenImage: a, images };
  }

  void it("with no writer, one run moves every unreferenced object to the trash and the next deletes them", async () => {
    const sb = await withForgottenPit("no-writer");
    const initially = await repositoryStats(sb.repo);
    const first = await gc(sb.repo);
    const between = await repositoryStats(sb.repo);
    assert.equal(first.trashed, sb.unreferenced.length);
    assert.equal(first.deleted, 0);
    assert.equal(first.inTrash, sb.unreferenced.length);
    assert.match(first.waitingReason ?? "", /safety margin/);
    assert.equal(first.reachable, initially.objects.packs + initially.objects.pages - sb.unreferenced.length);
    assert.deepEqual(await trashed(sb.repo), sb.unreferenced);
    assert.deepEqual(await unreferencedNames(sb.repo), []);
    assert.equal(between.objects.packs + between.objects.pages, first.reachable);

    await sleep(5);
    const second = await gc(sb.repo);
    const afterwards = await repositoryStats(sb.repo);
    assert.equal(second.trashed, 0);
    assert.equal(second.deleted, sb.unreferenced.length);
    assert.equal(second.inTrash, 0);
    assert.equal(second.waitingReason, null);
    assert.deepEqual(await trashed(sb.repo), []);
    assert.equal(afterwards.objects.packs + afterwards.objects.pages, first.reachable);
    assert.equal(afterwards.storedBytes.trash, between.storedBytes.trash - second.deletedBytes);
    assert.equal(afterwards.storedBytes.trash, 0);
    assert.ok(second.deletedBytes > 0);
    await assertVerifies(sb.repo, "after gc");
    await assertPitsRestore(sb.repo, sb.images, sb.dir);
    await sb.repo.close();
  });

  void it("a live writer keeps trashed objects from deletion until it ends, and its own new objects in place", async () => {
    const sb = await withForgottenPit("live-writer");
    const writerLock = await acquireLock(sb.repo, "writer", "test: a replication session");
    let session = writerLock;
    try {
      await sleep(20); // file times can lag the clock by a scheduler tick
      const own = await putOrphanChunk(sb.repo, "written by the running writer, its PIT not yet made");
      await sleep(5);
      const first = await gc(sb.repo);
      assert.equal(first.trashed, sb.unreferenced.length, "objects older than every writer go to the trash");
      assert.ok((await unreferencedNames(sb.repo)).includes(own), "the writer's own object stays in place");

      // However often gc runs, and the writer refreshes its lock, the trash stays while the writer runs.
      for (let i = 0; i < 2; i++) {
        await sleep(5);
        await writerLock.refresh();
        const again = await gc(sb.repo);
        assert.equal(again.deleted, 0);
        assert.equal(again.inTrash, sb.unreferenced.length);
        assert.match(again.waitingReason ?? "", /1 running writer/);
      }
      assert.deepEqual(await trashed(sb.repo), sb.unreferenced);

      // The session starts over: a new lock, taken after the objects were trashed.
      await writerLock.release();
      session = await acquireLock(sb.repo, "writer", "test: the session, started over");
      await sleep(5);
      const renewed = await gc(sb.repo);
      assert.equal(renewed.deleted, sb.unreferenced.length);
      assert.equal(renewed.trashed, 1, "the old session's orphan goes to the trash now");
      assert.deepEqual(await trashed(sb.repo), [own]);
    } finally {
      await session.release();
    }
    await assertVerifies(sb.repo, "after gc");
    await assertPitsRestore(sb.repo, sb.images, sb.dir);
    await sb.repo.close();
  });

  void it("a referenced object found in the trash is still read, and the next run puts it back", async () => {
    const sb = await withForgottenPit("restore");
    const reachable = [...(await reachableNames(sb.repo))].filter((n) => n.startsWith("packs/")).slice(0, 3);
    for (const name of reachable) {
      await sb.repo.backend.put(`trash/${name}`, await sb.repo.backend.get(name));
      await sb.repo.backend.delete(name);
    }
    await assertVerifies(sb.repo, "with referenced chunks in the trash");
    await assertPitsRestore(sb.repo, sb.images, sb.dir);
    const report = await gc(sb.repo);
    assert.equal(report.restored, reachable.length);
    for (const name of reachable) assert.ok(await sb.repo.backend.stat(name), `${name} was not put back`);
    assert.deepEqual(await trashed(sb.repo), sb.unreferenced);
    await sb.repo.close();
  });

  void it("converges when rerun after a gc that died part way through", async () => {
    const sb = await withForgottenPit("gc-crash");
    // The dead run had moved a third of the unreferenced objects to the trash,
    // copied another third without deleting the originals, and left its lock.
    const third = (k: number) => sb.unreferenced.filter((_, i) => i % 3 === k);
    for (const name of [...third(0), ...third(1)])
      await sb.repo.backend.put(`trash/${name}`, await sb.repo.backend.get(name));
    for (const name of third(0)) await sb.repo.backend.delete(name);
    const now = Date.now();
    const dead: LockRecord = {
      id: `gc-${now.toString(36)}-deadbeef0000`,
      kind: "gc",
      host: os.hostname(),
      pid: deadPid(),
      createdMs: now - 1000,
      refreshedMs: now - 1000,
      purpose: "gc",
    };
    await sb.repo.putMeta(`locks/${dead.id}`, dead);
    await sleep(5);

    const first = await gc(sb.repo);
    assert.equal(first.staleLocksBroken, 1);
    assert.deepEqual(await listLocks(sb.repo), []);
    await assertVerifies(sb.repo, "after the first rerun");
    const runs = 1 + (await gcUntilClean(sb.repo));
    assert.ok(runs <= 3, `took ${runs} runs`);
    await assertVerifies(sb.repo, "after converging");
    await assertPitsRestore(sb.repo, sb.images, sb.dir);
    await sb.repo.close();
  });

  void it("an object an import stores again after gc listed it survives the gc run", async () => {
    const sb = await withForgottenPit("rewrite-race");
    // The gc run stops at its first removal: it has listed the objects and the (absent) writer locks.
    const gcRepo = await sb.open({ gate: (verb, n) => verb === "delete" && !n.startsWith("locks/") });
    const run = gc(gcRepo);
    await (gcRepo.backend as GatedBackend).reached;
    // Meanwhile the forgotten image is imported again: no PIT names its chunks, so the import stores them.
    const again = await importImage(sb.repo, "srv", sb.forgottenImage);
    (gcRepo.backend as GatedBackend).open();
    await run;
    await gcRepo.close();
    const images = new Map([...sb.images, [again.id, sb.forgottenImage]]);
    await assertVerifies(sb.repo, "after gc finished");
    await assertPitsRestore(sb.repo, images, sb.dir);
    await gcUntilClean(sb.repo);
    await assertVerifies(sb.repo, "after later runs");
    await assertPitsRestore(sb.repo, images, sb.dir);
    await sb.repo.close();
  });

  void it("a gc run stalled between trashing and deleting does not lose what an import stored meanwhile", async () => {
    const MARGIN = 100;
    const sb = await withForgottenPit("stalled-gc");
    await sleep(MARGIN);
    // Run 1 copies the forgotten PIT's objects to the trash, then stalls before deleting the originals.
    const stalled = await sb.open({ gate: (verb, n) => verb === "delete" && !n.startsWith("locks/") });
    const run1 = gc(stalled, MARGIN);
    await (stalled.backend as GatedBackend).reached;
    await sleep(MARGIN + 20);
    // An import starts, stores the forgotten image's chunks again, and stops just before writing its PIT.
    const importer = await sb.open({ gate: (verb, n) => verb === "put" && n.startsWith("pits/") });
    const importing = importImage(importer, "srv", sb.forgottenImage);
    await (importer.backend as GatedBackend).reached;
    (stalled.backend as GatedBackend).open();
    await run1;
    // Run 2, while the import is still running.
    await sleep(MARGIN + 20);
    await gc(sb.repo, MARGIN);
    (importer.backend as GatedBackend).open();
    const pit = await importing;
    await assertVerifies(sb.repo, "after the import finished");
    await assertPitsRestore(sb.repo, new Map([...sb.images, [pit.id, sb.forgottenImage]]), sb.dir);
    await Promise.all([stalled.close(), importer.close(), sb.repo.close()]);
  });

  void it("gc and forget refuse to run while the GC lock is held, and change nothing", async () => {
    const sb = await withForgottenPit("gc-locked");
    const other = await sb.open();
    const lock = await acquireLock(sb.repo, "gc", "test: a long gc");
    try {
      for (const attempt of [() => gc(other), () => forgetPits(other, DEFAULT_RETENTION)]) {
        await assert.rejects(attempt(), (err) => {
          assert.ok(isLifeboatError(err, "STORE_LOCKED"), String(err));
          assert.match(err.message, new RegExp(`pid ${process.pid}`));
          return true;
        });
      }
      assert.deepEqual(
        (await listLocks(sb.repo)).map((l) => l.id),
        [lock.record.id],
        "a refused run left its lock",
      );
    } finally {
      await lock.release();
    }
    assert.deepEqual(await unreferencedNames(sb.repo), sb.unreferenced);
    assert.deepEqual(await trashed(sb.repo), []);
    await other.close();
    await sb.repo.close();
  });

  void it("a second gc started while a gc run is in progress fails with STORE_LOCKED", async () => {
    const sb = await withForgottenPit("gc-running");
    const slow = await sb.open({ gate: (verb, p) => verb === "list" && p === "packs/" });
    const first = gc(slow);
    await (slow.backend as GatedBackend).reached; // the first run holds the lock and is listing chunks
    await assert.rejects(gc(sb.repo), (err) => isLifeboatError(err, "STORE_LOCKED"));
    (slow.backend as GatedBackend).open();
    const report = await first;
    assert.equal(report.trashed, sb.unreferenced.length);
    assert.deepEqual(await listLocks(sb.repo), []);
    await slow.close();
    await sb.repo.close();
  });

  void it("a gc on a host whose clock is behind still finds a GC lock already held", async () => {
    const sb = await withForgottenPit("gc-skew");
    const ahead = await sb.open({ clockOffsetMs: 5_000 });
    const lock = await acquireLock(ahead, "gc", "test: forget on a host whose clock runs 5 s ahead");
    try {
      await assert.rejects(gc(sb.repo), (err) => isLifeboatError(err, "STORE_LOCKED"));
    } finally {
      await lock.release();
    }
    assert.deepEqual(await trashed(sb.repo), [], "gc ran under the held lock");
    await ahead.close();
    await sb.repo.close();
  });

  void it("of two gc runs started together, at most one runs", async () => {
    const sb = await withForgottenPit("gc-race");
    const other = await sb.open();
    const outcomes: string[] = [];
    for (let i = 0; i < 20; i++) {
      const results = await Promise.allSettled([sb.repo, other].map((r) => gc(r)));
      for (const r of results) {
        if (r.status === "rejected" && !isLifeboatError(r.reason, "STORE_LOCKED")) throw r.reason;
      }
      outcomes.push(results.map((r) => (r.status === "fulfilled" ? "ran" : "locked")).join("+"));
    }
    const both = outcomes.filter((o) => o === "ran+ran").length;
    assert.equal(both, 0, `both gc runs ran in ${both} of 20 tries: ${outcomes.join(", ")}`);
    await other.close();
    await sb.repo.close();
  });
});

type GatedVerb = "put" | "list" | "delete";

/**
 * Holds back the calls `held` picks until open() is called, to stop a gc run
 * or an import at a chosen point; `reached` resolves when the first held call
 * arrives.
 */
class GatedBackend implements Backend {
  readonly reached: Promise<void>;
  private arrived!: () => void;
  private release!: () => void;
  private readonly gate = new Promise<void>((resolve) => (this.release = resolve));
  /** The optional verbs are passed through, unheld, when the wrapped backend has them. */
  readonly sweepTemporaries?: (olderThanMs: number) => Promise<number>;
  readonly flush?: () => Promise<void>;
  readonly putIfAbsent?: (name: string, data: Uint8Array) => Promise<boolean>;

  constructor(
    private readonly inner: Backend,
    private readonly held: (verb: GatedVerb, name: string) => boolean,
  ) {
    this.reached = new Promise<void>((resolve) => (this.arrived = resolve));
    const optional = inner as Backend & { flush?: () => Promise<void> };
    if (optional.sweepTemporaries) this.sweepTemporaries = optional.sweepTemporaries.bind(inner);
    if (optional.flush) this.flush = optional.flush.bind(inner);
    if (inner.putIfAbsent) this.putIfAbsent = inner.putIfAbsent.bind(inner);
  }
  open(): void {
    this.release();
  }
  private async pass(verb: GatedVerb, name: string): Promise<void> {
    if (!this.held(verb, name)) return;
    this.arrived();
    await this.gate;
  }
  get properties() {
    return this.inner.properties;
  }
  async put(name: string, data: Uint8Array) {
    await this.pass("put", name);
    return this.inner.put(name, data);
  }
  get(name: string, range?: { offset: number; length: number }) {
    return this.inner.get(name, range);
  }
  stat(name: string) {
    return this.inner.stat(name);
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    await this.pass("list", prefix);
    yield* this.inner.list(prefix);
  }
  async delete(name: string) {
    await this.pass("delete", name);
    return this.inner.delete(name);
  }
  close() {
    return this.inner.close();
  }
}
