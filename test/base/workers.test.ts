import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { BlockPool } from "../../src/agent/block-pool.js";
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
});
