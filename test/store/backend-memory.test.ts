import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { backendChecks, runBackendChecks } from "../../src/store/backend-checks.js";
import { FaultyBackend } from "../../src/store/backends/faulty.js";
import { MemoryBackend } from "../../src/store/backends/memory.js";
import { backendContract } from "./backend-contract.js";

backendContract("MemoryBackend", () => {
  const backend = new MemoryBackend();
  return Promise.resolve({ backend, cleanup: () => backend.close() });
});

void describe("runBackendChecks (lifeboat store validate-backend)", () => {
  void it("passes a correct backend and leaves nothing behind", async () => {
    const backend = new MemoryBackend();
    const { checks } = await runBackendChecks(backend);
    assert.deepEqual(
      checks.filter((c) => !c.ok),
      [],
    );
    assert.equal(checks.length, backendChecks.length);
    for await (const o of backend.list("")) assert.fail(`left ${o.name} behind`);
  });

  void it("names what a broken backend gets wrong and runs every check", async () => {
    const backend = new FaultyBackend(new MemoryBackend()).corruptOnGet((n) => n.endsWith("/one"));
    const { checks } = await runBackendChecks(backend);
    const failed = checks.filter((c) => !c.ok);
    assert.deepEqual(
      failed.map((c) => c.name),
      ["put and get a 1-byte object"],
    );
    assert.match(failed[0]?.detail ?? "", /returned different bytes from offset 0/);
    assert.equal(checks.length, backendChecks.length);
  });
});
