/**
 * The replica against a model disk: a long random mix of whole blocks,
 * patches, zero blocks and references, with checkpoints in between, must
 * leave the replica equal to the model and never report a patch as diverged.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ReplicaApplier } from "../../src/replicator/applier.js";
import { type IncomingMessage, ReplicaStream } from "../../src/replicator/replica-stream.js";
import { type Pit, exportDisk } from "../../src/store/index.js";
import { prng, randomBuffer } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

const CHUNK = 64 * 1024;
const BLOCKS = 48;
const SIZE = BLOCKS * CHUNK;
const sha = (b: Buffer) => createHash("sha256").update(b).digest();

void describe("replica against a model disk", () => {
  let dir: string;
  before(async () => {
    dir = await tempDir();
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  // Patches run at once and start from the bytes of the chunk's last write: kept in memory (the
  // default), or read back from the repository while other writes are in flight (nothing kept).
  for (const { seed, recentChunks } of [
    { seed: 4242, recentChunks: undefined },
    { seed: 4243, recentChunks: 0 },
    { seed: 4244, recentChunks: 5 },
  ])
    void it(`random blocks, patches, zeros and references keep the replica equal to the model (seed ${seed}, ${recentChunks ?? "default"} chunks kept)`, async () => {
      const repo = await newRepository({ dir: path.join(dir, `r${seed}`), chunkSize: CHUNK });
      const applier = await ReplicaApplier.open(repo, "model", [{ index: 0, sizeBytes: SIZE, source: "m" }], {
        ...(recentChunks !== undefined ? { recentChunks } : {}),
      });
      const diverged: number[] = [];
      const pits: Pit[] = [];
      const stream = new ReplicaStream(applier, {
        commitIntervalMs: 60_000,
        commitBytes: 6 * CHUNK,
        onDurable: () => undefined,
        onPit: (_id, _seq, pit) => pits.push(pit),
        onFailure: (err) => assert.fail(err),
        onDiverged: (_d, offset) => diverged.push(offset),
      });
      try {
        const rand = prng(seed);
        const next = (n: number) => Math.floor(rand() * n);
        const model = Buffer.alloc(SIZE);
        const sent = new Map<string, Buffer>(); // hash → block, as the replicator holds it
        let seq = 0;
        for (let step = 0; step < 600; step++) {
          const b = next(BLOCKS);
          const at = b * CHUNK;
          const kind = next(10);
          let msg: IncomingMessage;
          if (kind < 3) {
            const data = randomBuffer(rand, CHUNK);
            data.copy(model, at);
            sent.set(sha(data).toString("hex"), data);
            msg = {
              type: "BLOCKS",
              disk: 0,
              offset: at,
              kind: "blocks",
              blocks: [{ encoding: "raw", sha256: sha(data), data }],
            };
          } else if (kind < 8) {
            const patches = [];
            let pos = next(CHUNK / 2);
            for (let k = 0; k < 1 + next(3) && pos < CHUNK; k++) {
              const len = Math.min(CHUNK - pos, 512 * (1 + next(8)));
              const data = kind === 7 ? Buffer.alloc(len) : randomBuffer(rand, len);
              data.copy(model, at + pos);
              patches.push({ at: pos, data });
              pos += len + 512 * (1 + next(16));
            }
            const block = model.subarray(at, at + CHUNK);
            msg = { type: "BLOCKS", disk: 0, offset: at, kind: "patch", sha256: sha(block), patches };
          } else if (kind === 8) {
            model.fill(0, at, at + CHUNK);
            msg = {
              type: "BLOCKS",
              disk: 0,
              offset: at,
              kind: "blocks",
              blocks: [{ encoding: "zero", sha256: Buffer.alloc(32), data: Buffer.alloc(0) }],
            };
          } else {
            const keys = [...sent.keys()];
            if (!keys.length) continue;
            const h = keys[next(keys.length)]!;
            const block = sent.get(h)!;
            block.copy(model, at);
            // As the agent does: a reference only for a chunk the replica says it holds (its answer to
            // a have-query); a block sent but overwritten before it was stored is not held.
            const held = applier.holds(Buffer.from(h, "hex"));
            msg = {
              type: "BLOCKS",
              disk: 0,
              offset: at,
              kind: "blocks",
              blocks: [
                held
                  ? { encoding: "ref", sha256: Buffer.from(h, "hex"), data: Buffer.alloc(0) }
                  : { encoding: "raw", sha256: Buffer.from(h, "hex"), data: block },
              ],
            };
          }
          await stream.apply(msg, ++seq);
          if (step % 97 === 0) await stream.commit();
        }
        await stream.apply(
          {
            type: "POINT",
            pointId: "end",
            consistency: "crash",
            takenAt: 1,
            disks: [{ index: 0, sizeBytes: SIZE }],
          },
          ++seq,
        );
        assert.deepEqual(diverged, []);
        assert.equal(pits.length, 1);
        assert.equal(pits[0]!.consistency, "crash");
        const out = path.join(dir, `out${seed}.img`);
        await exportDisk(repo, pits[0]!, 0, out);
        assert.ok((await fs.readFile(out)).equals(model), "the replica equals the model");
      } finally {
        // Also after a failure, so that the process can end.
        await stream.close().catch(() => undefined);
        await applier.close().catch(() => undefined);
      }
    });
});
