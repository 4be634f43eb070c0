import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Compressor } from "zstd-napi";
import type { LifeboatError } from "../../src/base/index.js";
import { ReplicaApplier } from "../../src/replicator/applier.js";
import {
  type IncomingMessage,
  ReplicaStream,
  type ReplicaStreamOptions,
} from "../../src/replicator/replica-stream.js";
import { type Pit, exportDisk, readHead } from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;
const SIZE = 64 * CHUNK;
const sha = (b: Buffer) => createHash("sha256").update(b).digest();

void describe("replica stream", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  void it("applies blocks of every encoding and patches, acknowledges only after checkpoints, makes PITs", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r1"), chunkSize: CHUNK });
    const applier = await ReplicaApplier.open(repo, "app01", [
      { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
    ]);
    const durable: number[] = [];
    const pits: Pit[] = [];
    const stream = new ReplicaStream(applier, {
      commitIntervalMs: 60_000, // only size and points commit in this test
      commitBytes: 8 * CHUNK,
      onDurable: (seq) => durable.push(seq),
      onPit: (_id, _seq, pit) => pits.push(pit),
      onFailure: (err) => {
        if (!expectFailure) assert.fail(err);
        failed(err);
      },
    });
    let expectFailure = false;
    let failed!: (err: Error) => void;
    const failure = new Promise<Error>((resolve) => (failed = resolve));
    const rand = prng(9);
    const disk = Buffer.alloc(SIZE);
    const blocks = (offset: number, n: number): IncomingMessage => {
      const list = [];
      for (let i = 0; i < n; i++) {
        const b = randomBuffer(rand, CHUNK);
        if (i % 2 === 1) b.fill(0x41, 0, CHUNK / 2); // half text: compresses
        b.copy(disk, offset + i * CHUNK);
        const z = new Compressor().compress(b);
        list.push(
          i % 2 === 0
            ? { encoding: "raw" as const, sha256: sha(b), data: b }
            : { encoding: "zstd" as const, sha256: sha(b), data: z },
        );
      }
      return { type: "BLOCKS", disk: 0, offset, kind: "blocks", blocks: list };
    };
    await stream.apply(blocks(0, 4), 1);
    assert.equal(durable.length, 0, "nothing is durable before a checkpoint");
    await stream.apply(blocks(4 * CHUNK, 4), 2); // 8 chunks of data: a checkpoint starts, no timer needed
    await stream.apply(blocks(8 * CHUNK, 4), 3);
    for (let i = 0; i < 200 && durable.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(durable, [2], "the size threshold checkpointed the first 8 chunks by itself");
    await stream.commit();
    assert.equal(durable.at(-1), 3);
    assert.equal((await readHead(repo, "app01"))?.appliedSeq, 3);

    // A block by reference, a zero block, a patch.
    disk.copy(disk, 20 * CHUNK, 0, CHUNK);
    const ref: IncomingMessage = {
      type: "BLOCKS",
      disk: 0,
      offset: 20 * CHUNK,
      kind: "blocks",
      blocks: [
        { encoding: "ref", sha256: sha(disk.subarray(0, CHUNK)), data: Buffer.alloc(0) },
        { encoding: "zero", sha256: sha(Buffer.alloc(CHUNK)), data: Buffer.alloc(0) },
      ],
    };
    disk.fill(0, 21 * CHUNK, 22 * CHUNK);
    await stream.apply(ref, 4);
    disk.write("hello", 5 * CHUNK + 100);
    await stream.apply(
      {
        type: "BLOCKS",
        disk: 0,
        offset: 5 * CHUNK,
        kind: "patch",
        sha256: sha(disk.subarray(5 * CHUNK, 6 * CHUNK)),
        patches: [{ at: 100, data: Buffer.from("hello") }],
      },
      5,
    );
    await stream.apply(
      { type: "POINT", pointId: "p-1", consistency: "filesystem", takenAt: 1_700_000_000_000, disks: [] },
      6,
    );
    assert.equal(durable.at(-1), 6);
    assert.equal(pits.length, 1);
    assert.equal(pits[0]!.consistency, "filesystem");
    assert.equal(pits[0]!.timeMs, 1_700_000_000_000);
    const out = path.join(dir, "out.img");
    await exportDisk(repo, pits[0]!, 0, out);
    assert.ok((await fs.readFile(out)).equals(disk), "the PIT holds exactly what was sent");

    // A patch whose result differs from the sender's block fails the stream once its hash is
    // checked (later messages may have been applied meanwhile); nothing after it is checkpointed.
    expectFailure = true;
    await stream.apply(
      {
        type: "BLOCKS",
        disk: 0,
        offset: 0,
        kind: "patch",
        sha256: Buffer.alloc(32, 1),
        patches: [{ at: 0, data: Buffer.from("x") }],
      },
      7,
    );
    assert.equal(((await failure) as LifeboatError).code, "REPLICA_DIVERGED");
    assert.equal(stream.hasFailed, true);
    await assert.rejects(stream.apply(blocks(0, 1), 8), { code: "REPLICA_CLOSED" });
    await assert.rejects(applier.checkpoint(8), { code: "REPLICA_DIVERGED" });
    await stream.close();
    await applier.close();
    // The failed patch never became durable: the head is still the PIT's state.
    assert.equal((await readHead(repo, "app01"))?.appliedSeq, 6);
  });

  void it("under a steady stream, a checkpoint covers what arrived while the one before ran", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r4"), chunkSize: CHUNK });
    const applier = await ReplicaApplier.open(repo, "app04", [
      { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
    ]);
    const durable: number[] = [];
    const stream = new ReplicaStream(applier, {
      commitIntervalMs: 60_000, // only the size threshold commits
      commitBytes: 2 * CHUNK, // every message reaches it
      onDurable: (seq) => durable.push(seq),
      onFailure: (err) => assert.fail(err),
    });
    const rand = prng(4);
    const disk = Buffer.alloc(SIZE);
    const messages = 24;
    for (let seq = 1; seq <= messages; seq++) {
      const offset = ((seq * 2) % 64) * CHUNK;
      const blocks = [0, 1].map((i) => {
        const b = randomBuffer(rand, CHUNK);
        b.copy(disk, offset + i * CHUNK);
        return { encoding: "raw" as const, sha256: sha(b), data: b };
      });
      await stream.apply({ type: "BLOCKS", disk: 0, offset, kind: "blocks", blocks }, seq);
    }
    for (let i = 0; i < 500 && durable.at(-1) !== messages; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(durable.at(-1), messages, "the last message became durable without a timer");
    // Each message asked for a checkpoint; one that waited behind a running one took all that
    // arrived meanwhile, instead of one checkpoint per message queueing up behind each other.
    assert.ok(
      durable.length < messages / 2,
      `${durable.length} checkpoints for ${messages} messages: ${durable.join(", ")}`,
    );
    assert.deepEqual(
      durable,
      [...durable].sort((a, b) => a - b),
      "durable positions only move forward",
    );
    await stream.close();
    await applier.close();
    const pitless = await readHead(repo, "app04");
    assert.equal(pitless?.appliedSeq, messages);
  });

  void it("a checkpoint waiting while a POINT arrives never records the POINT before its PIT exists", async () => {
    const repo = await newRepository({ dir: path.join(dir, "r5"), chunkSize: CHUNK });
    const applier = await ReplicaApplier.open(repo, "app05", [
      { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
    ]);
    // The PIT cannot be written (as on a full disk or a fenced replica).
    applier.makePit = () => Promise.reject(new Error("no space for the PIT"));
    const stream = new ReplicaStream(applier, {
      commitIntervalMs: 60_000,
      commitBytes: CHUNK, // every message asks for a checkpoint: one runs while the next waits
      onDurable: () => undefined,
      onFailure: () => undefined,
    });
    const rand = prng(5);
    for (let seq = 1; seq <= 3; seq++) {
      const b = randomBuffer(rand, CHUNK);
      const msg: IncomingMessage = {
        type: "BLOCKS",
        disk: 0,
        offset: seq * CHUNK,
        kind: "blocks",
        blocks: [{ encoding: "raw", sha256: sha(b), data: b }],
      };
      await stream.apply(msg, seq);
    }
    await assert.rejects(
      stream.apply(
        { type: "POINT", pointId: "p-5", consistency: "filesystem", takenAt: 1_700_000_000_000, disks: [] },
        4,
      ),
      /no space for the PIT/,
    );
    // The sender resumes after what the head records: had it recorded the POINT, the point
    // would never be sent again and its PIT never made.
    const head = await readHead(repo, "app05");
    assert.ok(head && head.appliedSeq >= 1 && head.appliedSeq <= 3, `head at ${head?.appliedSeq}`);
    await stream.close();
    await applier.close();
  });

  void it("refuses a message out of order", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    const applier = await ReplicaApplier.open(repo, "app02", [
      { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
    ]);
    const stream = new ReplicaStream(applier, { onDurable: () => undefined, onFailure: () => undefined });
    await assert.rejects(
      stream.apply({ type: "BLOCKS", disk: 0, offset: 0, kind: "blocks", blocks: [] }, 2),
      { code: "REPLICA_OUT_OF_ORDER" },
    );
    await stream.close();
    await applier.close();
  });
  void it("refuses a block whose content is not exactly one chunk, raw or compressed, and applies none of its run", async () => {
    const repo = await newRepository({ chunkSize: CHUNK });
    for (const [name, bad] of [
      ["short zstd", { encoding: "zstd" as const, data: new Compressor().compress(Buffer.alloc(100, 7)) }],
      [
        "long zstd",
        { encoding: "zstd" as const, data: new Compressor().compress(Buffer.alloc(CHUNK + 1, 7)) },
      ],
      ["short raw", { encoding: "raw" as const, data: Buffer.alloc(CHUNK - 1, 7) }],
    ] as const) {
      const applier = await ReplicaApplier.open(repo, "app03", [
        { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
      ]);
      const failures: unknown[] = [];
      const stream = new ReplicaStream(applier, {
        onDurable: () => undefined,
        onFailure: (e) => failures.push(e),
      });
      const good = Buffer.alloc(CHUNK, 1);
      await assert.rejects(
        stream.apply(
          {
            type: "BLOCKS",
            disk: 0,
            offset: 0,
            kind: "blocks",
            blocks: [
              { encoding: "raw", sha256: sha(good), data: good },
              { ...bad, sha256: sha(good) },
            ],
          },
          1,
        ),
        { code: "REPLICA_BAD_WRITE" },
        name,
      );
      assert.equal(stream.hasFailed, true, `${name}: the stream is closed for good`);
      await stream.close();
      await applier.close();
      assert.equal(await readHead(repo, "app03"), undefined, `${name}: nothing became durable`);
    }
  });

  void it("decompresses a long run in a worker but its last chunks: stored right, patched right, a bad frame fails the stream", async () => {
    const rand = prng(17);
    const disk = Buffer.alloc(SIZE);
    const N = 40; // more than the chunks of a run the stream keeps for patches
    const list = [];
    for (let i = 0; i < N; i++) {
      const b = randomBuffer(rand, CHUNK);
      if (i === 7) b.fill(0);
      else if (i % 5 !== 0) b.fill(0x41, 0, (3 * CHUNK) / 4); // compresses
      b.copy(disk, i * CHUNK);
      if (i === 7) list.push({ encoding: "zero" as const, sha256: sha(b), data: Buffer.alloc(0) });
      else if (i % 5 === 0) list.push({ encoding: "raw" as const, sha256: sha(b), data: b });
      else list.push({ encoding: "zstd" as const, sha256: sha(b), data: new Compressor().compress(b) });
    }
    const run: IncomingMessage = { type: "BLOCKS", disk: 0, offset: 0, kind: "blocks", blocks: list };

    const open = async (server: string, handlers: Omit<ReplicaStreamOptions, "onDurable">) => {
      const repo = await newRepository({ dir: path.join(dir, server), chunkSize: CHUNK });
      const applier = await ReplicaApplier.open(repo, server, [
        { index: 0, sizeBytes: SIZE, source: "/dev/sdb" },
      ]);
      return {
        repo,
        applier,
        stream: new ReplicaStream(applier, { onDurable: () => undefined, ...handlers }),
      };
    };
    const pits: Pit[] = [];
    const { repo, applier, stream } = await open("app05", {
      onPit: (_id, _seq, pit) => pits.push(pit),
      onFailure: (err) => assert.fail(err),
    });
    await stream.apply(run, 1);
    // Patches right after the run: to its last chunk (decompressed here and kept) and to one the
    // worker decompressed (read back by its entry).
    let seq = 2;
    for (const chunk of [N - 1, 6]) {
      disk.write("patched", chunk * CHUNK + 10);
      await stream.apply(
        {
          type: "BLOCKS",
          disk: 0,
          offset: chunk * CHUNK,
          kind: "patch",
          sha256: sha(disk.subarray(chunk * CHUNK, (chunk + 1) * CHUNK)),
          patches: [{ at: 10, data: Buffer.from("patched") }],
        },
        seq++,
      );
    }
    await stream.apply(
      { type: "POINT", pointId: "p", consistency: "crash", takenAt: 1_700_000_000_000, disks: [] },
      seq,
    );
    assert.equal(pits.length, 1);
    const out = path.join(dir, "long.img");
    await exportDisk(repo, pits[0]!, 0, out);
    assert.ok((await fs.readFile(out)).equals(disk), "the PIT holds exactly what was sent and patched");
    await stream.close();
    await applier.close();

    // A frame whose header declares its chunk's length but that holds less: only decompressing finds it.
    const short = new Compressor().compress(Buffer.alloc(CHUNK - 16, 9));
    const bad = {
      ...run,
      blocks: run.blocks.map((b, i) =>
        i === 10 ? { ...b, encoding: "zstd" as const, data: declaring(short, CHUNK) } : b,
      ),
    };
    const failures: Error[] = [];
    const {
      repo: repo2,
      applier: applier2,
      stream: stream2,
    } = await open("app06", {
      onFailure: (e) => failures.push(e),
    });
    await stream2.apply(bad, 1).catch((e: Error) => failures.push(e));
    await stream2.commit().catch((e: Error) => failures.push(e));
    assert.ok(failures.length > 0, "the stream failed");
    assert.ok(
      failures.some((e) => (e as LifeboatError).code === "STORE_BAD_FRAME"),
      failures.map((e) => String(e)).join("; "),
    );
    assert.equal(stream2.hasFailed, true);
    await stream2.close();
    await applier2.close();
    assert.equal(await readHead(repo2, "app06"), undefined, "nothing became durable");
  });
});

/** `frame` with its header's content size set to `size` (what it holds stays as it was). */
function declaring(frame: Buffer, size: number): Buffer {
  const f = Buffer.from(frame);
  const desc = f[4]!;
  const at = 5 + ((desc >> 5) & 1 ? 0 : 1) + [0, 1, 2, 4][desc & 3]!;
  if (desc >> 6 === 1) f.writeUInt16LE(size - 256, at);
  else if (desc >> 6 === 2) f.writeUInt32LE(size, at);
  else throw new Error(`frame header with content size flag ${desc >> 6}`);
  return f;
}
