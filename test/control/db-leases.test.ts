import assert from "node:assert/strict";
import { it } from "node:test";
import { ManualClock } from "../../src/base/index.js";
import { currentLease, releaseLease, tryAcquireLease } from "../../src/control/db/index.js";
import { forEachDatabase } from "../support/databases.js";

const T0 = 1_764_000_000_000;
const TTL = 30_000;

forEachDatabase("leases", (open, dialect) => {
  void it("of 20 concurrent acquirers exactly one wins", async () => {
    const a = await open();
    // On PostgreSQL half of them come through a second pool, as from another control-plane process.
    const b = dialect === "postgres" ? await open({ sameAs: a }) : a;
    const clock = new ManualClock(T0);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        tryAcquireLease((i % 2 === 0 ? a : b).db, "retention", `cp-${i}`, TTL, clock),
      ),
    );
    assert.equal(results.filter(Boolean).length, 1, `winners: ${JSON.stringify(results)}`);
    const winner = `cp-${results.indexOf(true)}`;
    assert.deepEqual(await currentLease(a.db, "retention", clock), {
      name: "retention",
      holder: winner,
      expires_at: T0 + TTL,
    });
  });

  void it("an expired lease can be taken over, a live one cannot", async () => {
    const { db } = await open();
    const clock = new ManualClock(T0);
    assert.equal(await tryAcquireLease(db, "gc", "cp-1", TTL, clock), true);
    clock.advance(TTL - 1);
    assert.equal(await tryAcquireLease(db, "gc", "cp-2", TTL, clock), false);
    clock.advance(1); // expires_at <= now: expired
    assert.equal(await currentLease(db, "gc", clock), undefined);
    assert.equal(await tryAcquireLease(db, "gc", "cp-2", TTL, clock), true);
    assert.equal((await currentLease(db, "gc", clock))?.holder, "cp-2");
    // The old holder's renewal now fails: it must stop the work.
    assert.equal(await tryAcquireLease(db, "gc", "cp-1", TTL, clock), false);
  });

  void it("the holder renews, which moves the expiry", async () => {
    const { db } = await open();
    const clock = new ManualClock(T0);
    assert.equal(await tryAcquireLease(db, "scheduler", "cp-1", TTL, clock), true);
    clock.advance(TTL / 2);
    assert.equal(await tryAcquireLease(db, "scheduler", "cp-1", TTL, clock), true);
    assert.equal((await currentLease(db, "scheduler", clock))?.expires_at, T0 + TTL / 2 + TTL);
    clock.advance(TTL - 1); // past the first expiry, before the renewed one
    assert.equal(await tryAcquireLease(db, "scheduler", "cp-2", TTL, clock), false);
  });

  void it("only the holder releases; then anyone may acquire", async () => {
    const { db } = await open();
    const clock = new ManualClock(T0);
    assert.equal(await tryAcquireLease(db, "sweep", "cp-1", TTL, clock), true);
    assert.equal(await releaseLease(db, "sweep", "cp-2"), false);
    assert.equal(await tryAcquireLease(db, "sweep", "cp-2", TTL, clock), false);
    assert.equal(await releaseLease(db, "sweep", "cp-1"), true);
    assert.equal(await releaseLease(db, "sweep", "cp-1"), false);
    assert.equal(await tryAcquireLease(db, "sweep", "cp-2", TTL, clock), true);
  });

  void it("leases with different names are independent", async () => {
    const { db } = await open();
    const clock = new ManualClock(T0);
    assert.equal(await tryAcquireLease(db, "a", "cp-1", TTL, clock), true);
    assert.equal(await tryAcquireLease(db, "b", "cp-2", TTL, clock), true);
  });

  void it("works inside a transaction, and refuses a ttl that is not positive", async () => {
    const { db } = await open();
    const clock = new ManualClock(T0);
    await db.transaction().execute(async (trx) => {
      assert.equal(await tryAcquireLease(trx, "tx", "cp-1", TTL, clock), true);
    });
    assert.equal((await currentLease(db, "tx", clock))?.holder, "cp-1");
    await assert.rejects(tryAcquireLease(db, "tx", "cp-1", 0, clock), RangeError);
  });
});
