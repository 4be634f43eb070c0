/**
 * Fencing a stale replicator (store/head.ts, "Fencing"). Two replicators race
 * on one server's replica: the first is paused (SIGSTOP, a partition) with a
 * stream open, the server is reassigned and the second takes the stream with
 * a higher epoch from the control database. When the first wakes up, its
 * head and PIT writes are refused, even a write that was already under way
 * lands where nobody reads it, and the replica is the second one's, intact.
 * The epochs themselves are tested on SQLite and PostgreSQL.
 */
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ManualClock, isLifeboatError } from "../../src/base/index.js";
import { takeReplicaEpoch } from "../../src/control/replicators.js";
import { ReplicaApplier } from "../../src/replicator/applier.js";
import {
  LocalBackend,
  type Pit,
  Repository,
  exportDisk,
  headEpoch,
  listHeads,
  readHead,
  verifyRepository,
} from "../../src/store/index.js";
import { fetchJson } from "../../src/net/index.js";
import { forEachDatabase } from "../support/databases.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";
import { startTlsServer } from "./tls-helpers.js";

const CHUNK = 64 * 1024;
const SIZE = 32 * CHUNK;
const SERVER = "db01";

const fencedError = (err: unknown) => {
  assert.ok(isLifeboatError(err, "STORE_HEAD_FENCED"), String(err));
  return true;
};

void describe("a stale replicator is fenced", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir("lifeboat-fencing-");
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  const open = (repo: Repository, epoch: number) =>
    ReplicaApplier.open(repo, SERVER, [{ index: 0, sizeBytes: SIZE, source: "/dev/vdb" }], { epoch });
  const exported = async (repo: Repository, pit: Pit) => {
    const out = path.join(dir, `out-${pit.id}.img`);
    await exportDisk(repo, pit, 0, out);
    const data = await fs.readFile(out);
    await fs.rm(out);
    return data;
  };

  void it("its head and PIT writes are refused and the new holder's replica stays whole", async () => {
    const repoDir = path.join(dir, "r1");
    const created = await newRepository({ dir: repoDir, chunkSize: CHUNK });
    // Two processes: each its own Repository on the same directory.
    const repoA = await Repository.open(new LocalBackend(repoDir), created.keyFile);
    const repoB = await Repository.open(new LocalBackend(repoDir), created.keyFile);
    const rand = prng(7);
    const disk = randomBuffer(rand, SIZE);

    // Replicator A holds the stream at epoch 1 and checkpoints the first half.
    const a = await open(repoA, 1);
    await a.writeChunks(0, 0, disk.subarray(0, SIZE / 2));
    await a.checkpoint(5);
    assert.equal((await readHead(repoA, SERVER))?.epoch, 1);
    // A applies more but is paused before its checkpoint. B takes the server at epoch 2.
    await a.writeChunks(0, SIZE / 2, randomBuffer(rand, SIZE / 2)); // what A would write late
    const b = await open(repoB, 2);
    assert.equal(b.appliedSeq, 5, "B resumes where A's head is");
    await b.writeChunks(0, SIZE / 2, disk.subarray(SIZE / 2));
    const pitB = await b.makePit({ seq: 8, consistency: "crash" });
    assert.deepEqual(await listHeads(repoB).then((hs) => hs.map((h) => [h.server, h.epoch])), [[SERVER, 2]]);

    // A wakes up: its checkpoint and its PIT are refused, and the stream fails.
    await assert.rejects(a.checkpoint(9), fencedError);
    await assert.rejects(a.makePit({ seq: 9, consistency: "crash" }), fencedError);
    const head = await readHead(repoA, SERVER);
    assert.deepEqual([head?.epoch, head?.appliedSeq], [2, 8], "the head is B's");
    assert.equal(
      (await repoA.backend.stat(`heads/${SERVER}@1`)) === undefined,
      true,
      "B removed A's version",
    );

    // A write A had already checked before the pause lands after B's: nobody reads it.
    const late = await repoA.getMeta<object>(`heads/${SERVER}@2`);
    await repoA.putMeta(`heads/${SERVER}@1`, { ...late, epoch: 1, appliedSeq: 99, disks: [] });
    assert.equal((await readHead(repoB, SERVER))?.appliedSeq, 8, "the late lower-epoch write is ignored");
    assert.equal(await headEpoch(repoB, SERVER), 2);
    await b.writeBytes(0, 0, Buffer.alloc(100, 0x42));
    await b.checkpoint(9);
    assert.equal((await repoB.backend.stat(`heads/${SERVER}@1`)) === undefined, true, "and is removed");
    await a.close();
    await b.close();

    // A stale holder cannot even open the replica again; the new holder's PIT is B's data.
    await assert.rejects(open(repoA, 1), fencedError);
    assert.deepEqual(await exported(repoB, pitB), disk);
    const report = await verifyRepository(repoB, { readData: true });
    assert.equal(report.ok, true, JSON.stringify(report.damage));
  });

  void it("a head of the old, epoch-less name is taken over by the first writer with an epoch", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r2"), chunkSize: CHUNK });
    const plain = await open(repo, 0);
    await plain.writeChunks(0, 0, Buffer.alloc(SIZE, 1));
    await plain.checkpoint(3);
    assert.ok(await repo.backend.stat(`heads/${SERVER}`), "epoch 0 keeps the name heads/SERVER");
    const next = await open(repo, 4);
    assert.equal(next.appliedSeq, 3);
    await next.checkpoint(4);
    await assert.rejects(plain.checkpoint(5), fencedError);
    assert.equal(await repo.backend.stat(`heads/${SERVER}`), undefined);
    assert.deepEqual(
      (await listHeads(repo)).map((h) => [h.server, h.epoch, h.appliedSeq]),
      [[SERVER, 4, 4]],
    );
    await plain.close();
    await next.close();
  });
});

forEachDatabase("replica epochs", (open) => {
  void it("rise when another holder takes the stream, never below the repository's", async () => {
    const database = await open();
    const clock = new ManualClock(1_764_000_000_000);
    const take = (holder: string, seen = 0) => takeReplicaEpoch(database, clock, "srv-1", holder, seen);
    assert.equal(await take("rep-a"), 1);
    assert.equal(await take("rep-a", 1), 1, "the same holder keeps its epoch");
    assert.equal(await take("rep-b", 1), 2, "another holder gets a higher one");
    assert.equal(await take("rep-a", 2), 3, "and back again");
    assert.equal(
      await take("rep-a", 7),
      8,
      "a repository ahead of the database (a restored backup) is passed",
    );
    assert.equal(
      await takeReplicaEpoch(database, clock, "srv-2", "rep-a", 5),
      6,
      "first take above the head",
    );
    // Racing holders never share an epoch.
    const got = await Promise.all(["x", "y", "z", "w"].map((h) => take(`rep-${h}`, 8)));
    const epochs = got.filter((e): e is number => e !== undefined);
    assert.equal(new Set(epochs).size, epochs.length, `distinct: ${JSON.stringify(got)}`);
    assert.ok(epochs.every((e) => e > 8));
  });

  void it("are handed out over the replicator API only to the replicator the server is assigned to", async (t) => {
    const database = await open();
    const dir = await tempDir("lifeboat-epoch-route-");
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    const site = await startTlsServer(database, path.join(dir, "server"));
    try {
      const rep1 = await site.registerReplicator(await site.token("replicator"), "rep-1");
      const rep2 = await site.registerReplicator(await site.token("replicator"), "rep-2");
      const agent = await site.registerAgent(await site.token("agent"), "app-1");
      const assign = (replicatorId: string) =>
        site.adminCall(`/api/v1/servers/${agent.id}/settings/replication`, {
          method: "PUT",
          body: { replicatorId },
        });
      const epoch = (rep: typeof rep1, headEpoch: number) =>
        fetchJson<{ epoch: number }>(rep.dispatcher, `${site.url}/api/v1/replicator/epoch`, {
          body: { serverId: agent.id, headEpoch },
        }).then((r) => r.epoch);
      await assign(rep1.id);
      assert.equal(await epoch(rep1, 0), 1);
      assert.equal(await epoch(rep1, 1), 1);
      await assert.rejects(epoch(rep2, 1), { code: "REPLICATOR_NOT_ASSIGNED" });
      await assign(rep2.id);
      assert.equal(await epoch(rep2, 1), 2);
      await assert.rejects(epoch(rep1, 2), { code: "REPLICATOR_NOT_ASSIGNED" });
      assert.equal(await epoch(rep2, 5), 6, "a repository ahead of the database is passed");
    } finally {
      await site.close();
    }
  });
});
