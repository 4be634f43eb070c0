import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LifeboatError, ManualClock, isLifeboatError } from "../../src/base/index.js";
import type { Backend, ObjectInfo } from "../../src/store/backend.js";
import { FaultyBackend } from "../../src/store/backends/faulty.js";
import { MemoryBackend } from "../../src/store/backends/memory.js";
import { withRetry, type RetryEvent } from "../../src/store/backends/retry.js";

async function setup(opts: { attempts?: number } = {}) {
  const clock = new ManualClock();
  const faulty = new FaultyBackend(new MemoryBackend(clock));
  await faulty.inner.put("obj", Buffer.from("payload"));
  for (const n of ["l/1", "l/2", "l/3"]) await faulty.inner.put(n, Buffer.from(n));
  const events: RetryEvent[] = [];
  const backend = withRetry(faulty, {
    attempts: opts.attempts ?? 5,
    baseDelayMs: 100,
    maxDelayMs: 300,
    clock,
    random: () => 0.5,
    onRetry: (e) => events.push(e),
  });
  return { clock, faulty, backend, events };
}

async function names(backend: Backend, prefix: string): Promise<string[]> {
  const out: ObjectInfo[] = [];
  for await (const o of backend.list(prefix)) out.push(o);
  return out.map((o) => o.name).sort();
}

const denied = () => new LifeboatError("STORE_ACCESS_DENIED", "access denied", { retryable: false });

void describe("withRetry", () => {
  void it("retries transient failures until one succeeds", async () => {
    const { faulty, backend, events, clock } = await setup();
    faulty.failNext("get", 2);
    assert.equal((await backend.get("obj")).toString(), "payload");
    assert.equal(faulty.calls.get, 3);
    assert.deepEqual(
      events.map((e) => [e.verb, e.name, e.attempt, e.delayMs]),
      [
        ["get", "obj", 1, 50],
        ["get", "obj", 2, 100],
      ],
    );
    assert.equal(clock.now(), 150);
  });

  void it("retries every verb", async () => {
    const { faulty, backend } = await setup();
    faulty.failNext("put", 1).failNext("stat", 1).failNext("delete", 1);
    await backend.put("new", Buffer.from("x"));
    assert.equal((await backend.stat("new"))?.size, 1);
    await backend.delete("new");
    assert.equal(await faulty.inner.stat("new"), undefined);
    assert.deepEqual([faulty.calls.put, faulty.calls.stat, faulty.calls.delete], [2, 2, 2]);
  });

  void it("retries a network errno that is not a LifeboatError", async () => {
    const { faulty, backend } = await setup();
    faulty.failNext("get", 1, Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }));
    assert.equal((await backend.get("obj")).toString(), "payload");
    assert.equal(faulty.calls.get, 2);
  });

  void it("passes permanent errors through at once", async () => {
    const { faulty, backend, events, clock } = await setup();
    faulty.failNext("put", 1, denied());
    await assert.rejects(backend.put("x", Buffer.from("x")), { code: "STORE_ACCESS_DENIED" });
    assert.equal(faulty.calls.put, 1);
    await assert.rejects(backend.get("absent"), { code: "STORE_OBJECT_MISSING" });
    assert.equal(faulty.calls.get, 1);
    assert.deepEqual(events, []);
    assert.equal(clock.now(), 0);
  });

  void it("stops after the configured attempts, backing off exponentially up to the cap", async () => {
    const { faulty, backend, events } = await setup({ attempts: 6 });
    faulty.failNext("stat", 100);
    await assert.rejects(backend.stat("obj"), (err) => {
      assert.ok(isLifeboatError(err, "STORE_IO"));
      assert.equal(err.retryable, true);
      assert.match(err.message, /after 6 attempts/);
      return true;
    });
    assert.equal(faulty.calls.stat, 6);
    assert.deepEqual(
      events.map((e) => e.delayMs),
      [50, 100, 150, 150, 150],
    );
  });

  void it("gives the last error as it was when it is not a LifeboatError", async () => {
    const { faulty, backend } = await setup({ attempts: 2 });
    const errno = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
    faulty.failNext("get", 5, errno);
    await assert.rejects(backend.get("obj"), (err) => err === errno);
    assert.equal(faulty.calls.get, 2);
  });

  void it("retries a listing that fails before its first object", async () => {
    const { faulty, backend } = await setup();
    faulty.failNext("list", 2);
    assert.deepEqual(await names(backend, "l/"), ["l/1", "l/2", "l/3"]);
    assert.equal(faulty.calls.list, 3);
  });

  void it("does not restart a listing that fails after its first object", async () => {
    const { faulty, backend } = await setup();
    faulty.failNext("list", 1, undefined, { afterCall: true });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const o of backend.list("l/")) seen.push(o.name);
      })(),
      { code: "STORE_IO" },
    );
    assert.equal(seen.length, 1);
    assert.equal(faulty.calls.list, 1);
  });

  void it("has sweepTemporaries exactly when the wrapped backend has it, and retries it", async () => {
    assert.equal("sweepTemporaries" in withRetry(new MemoryBackend()), false);
    const inner = new MemoryBackend();
    let calls = 0;
    const sweeping = Object.assign(inner, {
      sweepTemporaries: (_olderThanMs: number) =>
        ++calls === 1
          ? Promise.reject(new LifeboatError("STORE_IO", "busy", { retryable: true }))
          : Promise.resolve(3),
    });
    const backend = withRetry(new FaultyBackend(sweeping), { clock: new ManualClock() });
    assert.equal(await backend.sweepTemporaries?.(0), 3);
    assert.equal(calls, 2);
  });

  void it("refuses nonsense options", () => {
    assert.throws(() => withRetry(new MemoryBackend(), { attempts: 0 }), RangeError);
  });
});

void describe("FaultyBackend", () => {
  void it("fails only matching names, and a failure after the call lets the work land", async () => {
    const faulty = new FaultyBackend(new MemoryBackend());
    faulty.failNext("put", 1, undefined, { when: (n) => n.startsWith("pits/"), afterCall: true });
    await faulty.put("chunks/a", Buffer.from("a"));
    await assert.rejects(faulty.put("pits/1", Buffer.from("p")), { code: "STORE_IO" });
    assert.equal((await faulty.get("pits/1")).toString(), "p");
    await faulty.put("pits/2", Buffer.from("q"));
  });

  void it("tells a transient read failure from corruption", async () => {
    const faulty = new FaultyBackend(new MemoryBackend());
    await faulty.put("c", Buffer.from("abcdef"));

    faulty.failNext("get", 1);
    await assert.rejects(faulty.get("c"), { code: "STORE_IO", retryable: true });
    assert.equal((await faulty.get("c")).toString(), "abcdef");

    faulty.corruptOnGet((n) => n === "c", { times: 2 });
    assert.notEqual((await faulty.get("c")).toString(), "abcdef");
    assert.notEqual((await faulty.get("c", { offset: 0, length: 6 })).toString(), "abcdef");
    assert.equal((await faulty.get("c")).toString(), "abcdef");
    assert.equal((await faulty.inner.get("c")).toString(), "abcdef");

    faulty.corruptOnGet(() => true);
    faulty.clearFaults();
    assert.equal((await faulty.get("c")).toString(), "abcdef");
    assert.equal(faulty.calls.get, 6);
  });
});
