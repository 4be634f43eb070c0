import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { after, describe, it } from "node:test";
import { BlockPool } from "../../src/agent/block-pool.js";
import { BLOCK_THREAD_NAME, CHUNK_THREAD_NAME } from "../../src/base/workers.js";
import { WorkerPool } from "../../src/store/worker-pool.js";
import { deriveKeys, generateKeyFile } from "../../src/store/keys.js";

void describe("worker pools", () => {
  // Workers load native addons that abort the process when terminated while
  // they initialise: closing a pool at once must stop its workers cleanly.
  void it("close right after they start, many times, without aborting the process", async () => {
    const keys = deriveKeys(generateKeyFile("workers-test"));
    for (let i = 0; i < 40; i++) {
      const pool = new WorkerPool(keys, 1, 2);
      const blocks = new BlockPool(1, 2);
      await Promise.all([pool.close(), blocks.close()]);
    }
  });

  void it("still work after a pool closed while starting, and close after work", async () => {
    // The agent's block workers do not keep the process alive by themselves.
    const alive = setInterval(() => {}, 1000);
    after(() => clearInterval(alive));
    const blocks = new BlockPool(1, 2);
    const data = Buffer.alloc(8192, 7);
    const out = await blocks.prepare(data, 4096);
    assert.equal(out.length, 2);
    assert.equal(out[0]!.encoding, "zstd");
    await blocks.close();
    await assert.rejects(blocks.prepare(data, 4096));
  });

  void it("name their threads, so that top -H and /proc tell them apart", async (t) => {
    if (process.platform !== "linux") {
      t.skip("thread names are read from Linux's /proc");
      return;
    }
    const alive = setInterval(() => {}, 1000);
    after(() => clearInterval(alive));
    const keys = deriveKeys(generateKeyFile("workers-test"));
    const chunks = new WorkerPool(keys, 1, 2);
    const blocks = new BlockPool(1, 2);
    try {
      // Each pool has done some work: its workers are running (each names itself as it starts).
      await blocks.prepare(Buffer.alloc(8192, 7), 4096);
      await chunks.scan(Buffer.alloc(8192, 7), 4096);
      const count = (name: string) =>
        readdirSync("/proc/self/task").filter((tid) => {
          try {
            return readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim() === name;
          } catch {
            return false; // a thread that ended meanwhile
          }
        }).length;
      for (let i = 0; i < 100 && (count(BLOCK_THREAD_NAME) < 2 || count(CHUNK_THREAD_NAME) < 2); i++)
        await new Promise((r) => setTimeout(r, 50));
      assert.equal(count(BLOCK_THREAD_NAME), 2);
      assert.equal(count(CHUNK_THREAD_NAME), 2);
      // The main thread keeps its own name.
      assert.notEqual(readFileSync(`/proc/self/task/${process.pid}/comm`, "utf8").trim(), BLOCK_THREAD_NAME);
    } finally {
      await Promise.all([chunks.close(), blocks.close()]);
    }
  });
});
