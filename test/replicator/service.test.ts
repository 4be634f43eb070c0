/**
 * The replicator on a real TLS listener: an agent's session streams a disk,
 * makes a consistency point and gets its PIT; acknowledgements follow
 * checkpoints; a replicator that restarts resumes the agent's stream from the
 * replica's head instead of starting over.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { createCa, type CaCredentials } from "../../src/net/index.js";
import { Replicator } from "../../src/replicator/service.js";
import { LocalBackend, type Pit, Repository, exportDisk, readHead } from "../../src/store/index.js";
import type { DiskInfo, PointDone, SequencedMessage, Welcome } from "../../src/wire/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";
import {
  type Credentials,
  type TestWireServer,
  agentCredentials,
  agentSession,
  startWireServer,
} from "../wire/fixtures.js";

const CHUNK = 64 * 1024;
const DISK: DiskInfo = { index: 0, id: "vdb", sizeBytes: 96 * CHUNK, blockSize: CHUNK };
const sha = (b: Buffer) => createHash("sha256").update(b).digest();

function blocks(disk: Buffer, first: number, count: number): SequencedMessage {
  const list = [];
  for (let i = first; i < first + count; i++) {
    const data = disk.subarray(i * CHUNK, (i + 1) * CHUNK);
    list.push({ encoding: "raw" as const, sha256: sha(data), data: Buffer.from(data) });
  }
  return { type: "BLOCKS", disk: 0, offset: first * CHUNK, kind: "blocks", blocks: list };
}

void describe("replicator over the wire", () => {
  let dir: string;
  let ca: CaCredentials;
  let creds: Credentials;
  let disk: Buffer;
  before(async () => {
    dir = await tempDir();
    ca = await createCa({ commonName: "Lifeboat CA replicator test" });
    creds = await agentCredentials(ca, "srv-1");
    disk = randomBuffer(prng(4), DISK.sizeBytes);
    disk.fill(0, 40 * CHUNK, 60 * CHUNK);
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  const start = async (repo: Repository, pits: Pit[], port?: number) => {
    const replicator = new Replicator({
      repo,
      serverName: (peer, hello) => {
        assert.equal(peer.id, `agent:${hello.agent.serverId}`);
        return hello.agent.serverId;
      },
      commitIntervalMs: 50,
      onPit: (_server, pit) => pits.push(pit),
    });
    const server: TestWireServer = await startWireServer({
      ca,
      wire: replicator.wire,
      ...(port ? { port } : {}),
    });
    return { replicator, server };
  };

  void it("streams a disk, acknowledges after checkpoints, turns a point into a PIT, resumes after a restart", async () => {
    const repoDir = path.join(dir, "repo");
    const repo = await newRepository({ dir: repoDir, chunkSize: CHUNK });
    const pits: Pit[] = [];
    let { replicator, server } = await start(repo, pits);
    const welcomes: Welcome[] = [];
    const done: PointDone[] = [];
    const session = agentSession(server, creds, {
      disks: [DISK],
      onWelcome: (w) => welcomes.push(w),
      onPointDone: (d) => done.push(d),
    });
    await session.start();
    assert.equal(welcomes[0]!.resumed, false);

    // Initial sync, 8 chunks a frame; the zero stretch is sent as zero blocks.
    for (let i = 0; i < 96; i += 8) {
      if (i >= 40 && i < 60) {
        const zero = Buffer.alloc(CHUNK);
        await session.send({
          type: "BLOCKS",
          disk: 0,
          offset: i * CHUNK,
          kind: "blocks",
          blocks: Array.from({ length: Math.min(8, 60 - i) }, () => ({
            encoding: "zero" as const,
            sha256: sha(zero),
            data: Buffer.alloc(0),
          })),
        });
        if (60 - i < 8) await session.send(blocks(disk, 60, i + 8 - 60));
      } else await session.send(blocks(disk, i, 8));
    }
    const seq = await session.send({
      type: "POINT",
      pointId: "initial",
      consistency: "crash",
      takenAt: Date.now(),
      disks: [{ index: 0, sizeBytes: DISK.sizeBytes }],
    });
    await session.whenAcked(seq);
    assert.equal(session.lastAcked, seq);
    // 76 raw blocks of data; the 20 zero blocks carry none.
    assert.deepEqual(replicator.ingested(), new Map([["srv-1", 76 * CHUNK]]));
    assert.deepEqual(replicator.servers(), ["srv-1"]);
    await until(() => done.length === 1);
    assert.equal(done[0]!.pointId, "initial");
    assert.equal(pits.length, 1);
    assert.equal(done[0]!.pitId, pits[0]!.id);
    const out = path.join(dir, "out.img");
    await exportDisk(repo, pits[0]!, 0, out);
    const got = await fs.readFile(out);
    const differ = [];
    for (let c = 0; c < 96; c++)
      if (!got.subarray(c * CHUNK, (c + 1) * CHUNK).equals(disk.subarray(c * CHUNK, (c + 1) * CHUNK)))
        differ.push(c);
    if (differ.length > 0) {
      const c = differ[0]!;
      const g = got.subarray(c * CHUNK, (c + 1) * CHUNK);
      console.log(
        "DEBUG",
        differ.length,
        "zero?",
        g.equals(Buffer.alloc(CHUNK)),
        "matches chunk",
        [...Array(96).keys()].filter((k) => disk.subarray(k * CHUNK, (k + 1) * CHUNK).equals(g)),
        "seq",
        seq,
      );
    }
    assert.deepEqual(differ, [], "the PIT is the disk the agent sent");

    // A small write travels as a patch; it is durable (acknowledged) within the commit interval.
    disk.write("changed by a 4 KiB write", 3 * CHUNK + 4096);
    const patchSeq = await session.send({
      type: "BLOCKS",
      disk: 0,
      offset: 3 * CHUNK,
      kind: "patch",
      sha256: sha(disk.subarray(3 * CHUNK, 4 * CHUNK)),
      patches: [{ at: 4096, data: Buffer.from(disk.subarray(3 * CHUNK + 4096, 3 * CHUNK + 8192)) }],
    });
    await session.whenAcked(patchSeq);
    assert.equal((await readHead(repo, "srv-1"))?.appliedSeq, patchSeq, "acknowledged means in the head");

    // The replicator restarts (a new process reads the same head): the agent's session reconnects
    // with its resume token and continues the stream where the head is, without starting over.
    const port = server.port;
    await replicator.close();
    await server.close();
    const reopened = await Repository.open(new LocalBackend(repoDir), repo.keyFile);
    ({ replicator, server } = await start(reopened, pits, port));
    await until(() => welcomes.length === 2, 10_000);
    assert.equal(welcomes[1]!.resumed, true, "the head's stream is resumed, not started over");
    assert.equal(welcomes[1]!.lastAcked, patchSeq);
    const last = await session.send(blocks(disk, 90, 6));
    const sent = Buffer.from(disk);
    disk.fill(7, 0, 100); // written after the point's blocks were sent: not in the PIT
    const pointSeq = await session.send({
      type: "POINT",
      pointId: "after-restart",
      consistency: "filesystem",
      takenAt: Date.now(),
      disks: [{ index: 0, sizeBytes: DISK.sizeBytes }],
    });
    assert.equal(pointSeq, last + 1);
    await until(() => done.length === 2);
    const pit = pits.at(-1)!;
    assert.equal(pit.consistency, "filesystem");
    await exportDisk(reopened, pit, 0, out, { overwrite: true });
    assert.ok((await fs.readFile(out)).equals(sent), "the PIT after the restart has every write sent");

    await session.close();
    await replicator.close();
    await server.close();
  });
});

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}
