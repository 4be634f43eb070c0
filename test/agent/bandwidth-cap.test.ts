import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { BandwidthCap } from "../../src/agent/bandwidth-cap.js";

void describe("BandwidthCap", () => {
  void it("lets sends through at the capped rate, and not at all without a cap", async () => {
    const clock = new ManualClock(1000);
    const cap = new BandwidthCap(clock, 8); // 1 MB/s
    assert.equal(cap.bytesPerSecond, 1_000_000);
    for (let i = 0; i < 10; i++) await cap.take(500_000);
    // 5 MB at 1 MB/s, starting with no credit: about five seconds (sleeps advance the manual clock).
    assert.ok(clock.now() - 1000 >= 4750 && clock.now() - 1000 <= 5250, `took ${clock.now() - 1000} ms`);
    cap.set(0);
    const before = clock.now();
    await cap.take(100_000_000);
    assert.equal(clock.now(), before, "no cap: no wait");
  });

  void it("keeps at most a second of credit, and lets a send larger than a second's worth through", async () => {
    const clock = new ManualClock(0);
    const cap = new BandwidthCap(clock, 8);
    clock.advance(60_000); // idle for a minute
    const before = clock.now();
    await cap.take(1_000_000);
    await cap.take(1_000_000); // the second must wait: credit stopped at one second
    assert.ok(clock.now() - before >= 750, `waited ${clock.now() - before} ms`);
    const at = clock.now();
    await cap.take(3_000_000); // over a second's worth: goes once a full second of credit is there
    assert.ok(clock.now() - at <= 1250, `waited ${clock.now() - at} ms`);
  });
});
