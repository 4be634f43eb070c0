import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ManualClock, isLifeboatError } from "../../src/base/index.js";
import {
  DEFAULT_RETENTION,
  parseRetention,
  planRetention,
  validateRetention,
  type RetentionPit,
  type RetentionPlan,
  type RetentionPolicy,
  type RetentionTier,
} from "../../src/store/retention.js";
import { seedFromEnv } from "../support/images.js";

const SEC = 1_000;
const MIN = 60 * SEC;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const WEEK = 7 * DAY;

// Randomized runs share one seed, printed here; LIFEBOAT_SEED=<seed> replays them.
const SEED = seedFromEnv();
console.log(`retention properties: seed ${SEED} (replay with LIFEBOAT_SEED=${SEED})`);

/**
 * fc.assert with the shared seed. `shrinkForMs` bounds the whole run: a
 * failing simulation of thousands of steps can shrink for many minutes, so
 * it stops there and reports the smallest counterexample found so far.
 */
function check<Ts extends [unknown, ...unknown[]]>(
  prop: fc.IProperty<Ts>,
  numRuns: number,
  shrinkForMs?: number,
): void {
  try {
    fc.assert(prop, {
      seed: SEED,
      numRuns,
      ...(shrinkForMs === undefined
        ? {}
        : { interruptAfterTimeLimit: shrinkForMs, markInterruptAsFailure: true }),
    });
  } catch (err) {
    if (err instanceof Error) err.message = `replay with LIFEBOAT_SEED=${SEED}\n${err.message}`;
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Reference model: the rules written as directly as possible, quadratic and
// obviously right, for planRetention to be compared against.

/** True when q outranks p in a bucket: later time, then higher seq, then greater id. */
function refNewer(q: RetentionPit, p: RetentionPit): boolean {
  if (q.timeMs !== p.timeMs) return q.timeMs > p.timeMs;
  if (q.seq !== p.seq) return q.seq > p.seq;
  return q.id > p.id;
}

/** True when q was written after p: higher seq, then later time, then greater id. */
function refLater(q: RetentionPit, p: RetentionPit): boolean {
  if (q.seq !== p.seq) return q.seq > p.seq;
  if (q.timeMs !== p.timeMs) return q.timeMs > p.timeMs;
  return q.id > p.id;
}

function refLabel(t: RetentionTier): string {
  const units: [string, number][] = [
    ["d", DAY],
    ["h", HOUR],
    ["m", MIN],
    ["s", SEC],
  ];
  const fmt = (ms: number) => {
    const unit = units.find(([, size]) => ms % size === 0);
    return unit ? `${ms / unit[1]}${unit[0]}` : `${ms}ms`;
  };
  return `${fmt(t.everyMs)}:${fmt(t.keepMs)}`;
}

function referencePlan(pits: RetentionPit[], policy: RetentionPolicy, now: number): RetentionPlan {
  const reasonsOf = (p: RetentionPit): string[] => {
    const reasons: string[] = [];
    if (p.timeMs > now) reasons.push("future");
    if (pits.filter((q) => refLater(q, p)).length < policy.keepLast) reasons.push("keepLast");
    for (const t of policy.tiers) {
      const young = pits.filter((q) => now - q.timeMs <= t.keepMs);
      const bucket = (q: RetentionPit) => Math.floor(q.timeMs / t.everyMs);
      const inBucket = young.filter((q) => bucket(q) === bucket(p));
      if (young.includes(p) && !inBucket.some((q) => refNewer(q, p))) reasons.push(refLabel(t));
    }
    return reasons;
  };
  const sorted = [...pits].sort((a, b) => (refNewer(a, b) ? -1 : 1));
  const plan: RetentionPlan = { keep: [], forget: [] };
  for (const p of sorted) {
    const reasons = reasonsOf(p);
    if (reasons.length > 0) plan.keep.push({ id: p.id, reasons });
    else plan.forget.push({ id: p.id, ageMs: now - p.timeMs });
  }
  return plan;
}

// ---------------------------------------------------------------------------
// Generators.

const BASE = Date.UTC(2025, 0, 6); // a Monday, midnight UTC

/** A valid policy: the default, or 1 to 4 tiers of nice or arbitrary widths. */
const policyArb: fc.Arbitrary<RetentionPolicy> = fc.oneof(
  fc.constant(DEFAULT_RETENTION),
  fc
    .record({
      keepLast: fc.integer({ min: 1, max: 3 }),
      tiers: fc.uniqueArray(
        fc.record({
          everyMs: fc.oneof(
            fc.constantFrom(MIN, 10 * MIN, 30 * MIN, HOUR, 6 * HOUR, DAY, WEEK),
            fc.integer({ min: 1, max: 2 * DAY }),
          ),
          times: fc.integer({ min: 1, max: 30 }),
          extraMs: fc.integer({ min: 0, max: HOUR }),
        }),
        { minLength: 1, maxLength: 4, selector: (t) => t.everyMs },
      ),
    })
    .map(({ keepLast, tiers }) => ({
      keepLast,
      tiers: [...tiers]
        .sort((a, b) => a.everyMs - b.everyMs)
        .map(({ everyMs, times, extraMs }) => ({
          everyMs,
          keepMs: everyMs === DAY ? times * DAY : everyMs * times + extraMs,
        })),
    })),
);

/** A set of PITs around `now`: mostly the past week, some future, many ties on time and seq. */
const pitsAndNowArb = fc
  .record({
    now: fc.integer({ min: BASE, max: BASE + 30 * DAY }),
    pits: fc.uniqueArray(
      fc.record({
        id: fc.string({ minLength: 1, maxLength: 3 }),
        offsetMs: fc.oneof(
          fc.integer({ min: -9 * DAY, max: 2 * HOUR }),
          fc.integer({ min: -50, max: 3 }).map((n) => n * 10 * MIN),
          fc.constantFrom(0, -HOUR, -DAY, -WEEK, 1),
        ),
        seq: fc.integer({ min: 0, max: 60 }),
      }),
      { maxLength: 60, selector: (p) => p.id },
    ),
  })
  .map(({ now, pits }) => ({
    now,
    pits: pits.map(({ id, offsetMs, seq }): RetentionPit => ({ id, timeMs: now + offsetMs, seq })),
  }));

const keptIds = (plan: RetentionPlan): Set<string> => new Set(plan.keep.map((k) => k.id));

function isSubset(a: Set<string>, b: Set<string>): boolean {
  return [...a].every((x) => b.has(x));
}

// ---------------------------------------------------------------------------

void describe("DEFAULT_RETENTION", () => {
  void it("is the AWS Elastic Disaster Recovery schedule and parses from its written form", () => {
    assert.deepEqual(DEFAULT_RETENTION, {
      tiers: [
        { everyMs: 10 * MIN, keepMs: HOUR },
        { everyMs: HOUR, keepMs: DAY },
        { everyMs: DAY, keepMs: WEEK },
      ],
      keepLast: 1,
    });
    assert.deepEqual(parseRetention("10m:1h,1h:24h,1d:7d"), DEFAULT_RETENTION);
    assert.deepEqual(parseRetention({ "10m": "1h", "1h": "24h", "1d": "7d" }), DEFAULT_RETENTION);
    assert.ok(Object.isFrozen(DEFAULT_RETENTION) && Object.isFrozen(DEFAULT_RETENTION.tiers));
  });
});

void describe("planRetention examples", () => {
  /** A PIT every 10 minutes for `days`, written by a ManualClock, the last one at `end`. */
  function every10Minutes(end: number, days: number): RetentionPit[] {
    const clock = new ManualClock(end - days * DAY);
    const pits: RetentionPit[] = [];
    for (let seq = 0; clock.now() <= end; seq++, clock.advance(10 * MIN)) {
      pits.push({ id: `pit-${seq}`, timeMs: clock.now(), seq });
    }
    return pits;
  }

  const tally = (plan: RetentionPlan, reason: string) =>
    plan.keep.filter((k) => k.reasons.includes(reason)).length;

  void it("keeps the AWS shape over eight days of PITs every 10 minutes", () => {
    const now = BASE + 8 * DAY; // midnight, when the newest PIT is taken
    const pits = every10Minutes(now, 8);
    assert.equal(pits.length, 8 * 144 + 1);
    const plan = planRetention(pits, DEFAULT_RETENTION, now);
    // 10m tier: ages 0..60m inclusive, 7 PITs in 7 buckets.
    assert.equal(tally(plan, "10m:1h"), 7);
    // hourly: ages 0..24h; the hour that just began holds the newest PIT and
    // each of the 24 hours before it keeps its last PIT (hh:50).
    assert.equal(tally(plan, "1h:1d"), 25);
    // daily: today (just the newest PIT) and the last PIT of each of 7 days.
    assert.equal(tally(plan, "1d:7d"), 8);
    assert.equal(tally(plan, "keepLast"), 1);
    // 7 ten-minute + 23 more hourly + 6 more daily; the newest and the one
    // ten minutes before it count in all three tiers.
    assert.equal(plan.keep.length, 36);
    assert.equal(plan.forget.length, pits.length - 36);
    assert.deepEqual(plan.keep[0], {
      id: `pit-${pits.length - 1}`,
      reasons: ["keepLast", "10m:1h", "1h:1d", "1d:7d"],
    });
    // Nothing older than a week survives.
    const byId = new Map(pits.map((p) => [p.id, p]));
    for (const k of plan.keep) assert.ok(now - (byId.get(k.id)?.timeMs ?? 0) <= WEEK);
    assert.ok(plan.forget.every((f) => f.ageMs > 0));
  });

  void it("keeps the latest PIT even when its writer's clock stepped back a month", () => {
    const now = BASE + 10 * DAY;
    const pits = [
      ...every10Minutes(now - HOUR, 2),
      { id: "stepped-back", timeMs: now - 30 * DAY, seq: 10_000 },
    ];
    const plan = planRetention(pits, DEFAULT_RETENTION, now);
    const latest = plan.keep.find((k) => k.id === "stepped-back");
    assert.deepEqual(latest?.reasons, ["keepLast"]);
  });

  void it("keeps the newest PIT under any policy, alone or among many", () => {
    const policy = parseRetention("1s:1s");
    const now = BASE;
    assert.deepEqual(planRetention([{ id: "only", timeMs: now - 90 * DAY, seq: 1 }], policy, now), {
      keep: [{ id: "only", reasons: ["keepLast"] }],
      forget: [],
    });
    const plan = planRetention(every10Minutes(now - DAY, 3), policy, now);
    assert.equal(plan.keep.length, 1);
  });

  void it("keeps future-dated PITs (the clock stepped back, or a writer runs ahead)", () => {
    const now = BASE + 3 * DAY;
    const pits = every10Minutes(now + 2 * HOUR, 3); // the last two hours are "ahead" of now
    const plan = planRetention(pits, DEFAULT_RETENTION, now);
    const future = pits.filter((p) => p.timeMs > now);
    assert.equal(future.length, 12);
    const kept = keptIds(plan);
    for (const p of future) assert.ok(kept.has(p.id), `${p.id} is in the future and kept`);
    for (const k of plan.keep) {
      const p = pits.find((q) => q.id === k.id);
      assert.equal(k.reasons.includes("future"), (p?.timeMs ?? 0) > now);
    }
    // Planning after the clock stepped back keeps all it kept before.
    assert.ok(isSubset(keptIds(planRetention(pits, DEFAULT_RETENTION, now + 2 * HOUR)), kept));
  });

  void it("gives the same plan whatever the order of its input", () => {
    const pits = every10Minutes(BASE + 2 * DAY, 2);
    const forwards = planRetention(pits, DEFAULT_RETENTION, BASE + 2 * DAY);
    const backwards = planRetention([...pits].reverse(), DEFAULT_RETENTION, BASE + 2 * DAY);
    assert.deepEqual(backwards, forwards);
  });

  void it("refuses duplicate ids and times that are not numbers", () => {
    const p = { id: "a", timeMs: BASE, seq: 1 };
    assert.throws(
      () => planRetention([p, { ...p }, { id: "b", timeMs: NaN, seq: 2 }], DEFAULT_RETENTION, BASE),
      (err: unknown) =>
        isLifeboatError(err, "RETENTION_INPUT_INVALID") &&
        err.message.includes("PIT a is listed twice") &&
        err.message.includes("PIT b has time NaN"),
    );
    assert.throws(() => planRetention([p], DEFAULT_RETENTION, Infinity), /now is not a finite number/);
  });

  void it("refuses a policy built in code that breaks the rules", () => {
    const bad: RetentionPolicy = { tiers: [{ everyMs: 0, keepMs: HOUR }], keepLast: 0 };
    assert.throws(
      () => planRetention([], bad, BASE),
      (err: unknown) =>
        isLifeboatError(err, "RETENTION_INVALID") &&
        err.message.includes("keepLast must be a whole number of at least 1") &&
        err.message.includes("EVERY must be more than 0"),
    );
    assert.doesNotThrow(() => validateRetention(DEFAULT_RETENTION));
  });
});

void describe("parseRetention", () => {
  /** Asserts `spec` is refused with RETENTION_INVALID naming every one of `problems`. */
  function refuses(spec: unknown, problems: (string | RegExp)[]): void {
    assert.throws(
      () => parseRetention(spec),
      (err: unknown) => {
        assert.ok(isLifeboatError(err, "RETENTION_INVALID"), String(err));
        for (const p of problems) {
          if (typeof p === "string") assert.ok(err.message.includes(p), `"${p}" in: ${err.message}`);
          else assert.match(err.message, p);
        }
        assert.match(err.hint, /"10m:1h,1h:24h,1d:7d"/);
        assert.match(err.hint, /units s, m, h, d, w/);
        return true;
      },
    );
  }

  void it("reads every unit, with spaces around entries", () => {
    assert.deepEqual(parseRetention(" 30s:5m , 1m:1h,1h:2d, 1d:1w,1w:52w "), {
      tiers: [
        { everyMs: 30 * SEC, keepMs: 5 * MIN },
        { everyMs: MIN, keepMs: HOUR },
        { everyMs: HOUR, keepMs: 2 * DAY },
        { everyMs: DAY, keepMs: WEEK },
        { everyMs: WEEK, keepMs: 52 * WEEK },
      ],
      keepLast: 1,
    });
    assert.ok(Object.isFrozen(parseRetention("1h:1h").tiers));
  });

  void it("reports every broken rule together", () => {
    refuses("0m:1h,2h:1h,1h:24h,1d:400d", [
      'tier 1 "0m:1h": EVERY must be more than 0',
      'tier 2 "2h:1h": KEEP must be at least EVERY',
      'tier 3 "1h:24h": tiers go from the finest EVERY to the coarsest; it comes after "2h:1h"',
      'tier 4 "1d:400d": a daily tier keeps between 1d and 365d',
    ]);
  });

  void it("reports syntax errors and broken rules together", () => {
    refuses("10m:1h,abc,1h:xx,5m:1h,2h:1h:3h", [
      'entry 2 "abc": expected EVERY:KEEP',
      'tier 2 "1h:xx": KEEP "xx" is not a duration',
      'tier 3 "5m:1h": tiers go from the finest EVERY to the coarsest; it comes after "10m:1h"',
      'entry 5 "2h:1h:3h": expected EVERY:KEEP',
    ]);
    refuses({ "10m": "1h", "1x": "2h", "2h": 3, "1d": "0d" }, [
      'tier 2 "1x:2h": EVERY "1x" is not a duration',
      'tier "2h": KEEP must be a string like "24h" (got 3)',
      "a daily tier keeps between 1d and 365d",
    ]);
  });

  void it("refuses a daily tier kept 0 or 366 days, and takes 1 to 365", () => {
    refuses("1d:0d", ['tier 1 "1d:0d": a daily tier keeps between 1d and 365d']);
    refuses("1d:366d", ['tier 1 "1d:366d": a daily tier keeps between 1d and 365d']);
    refuses({ "1d": "53w" }, ["a daily tier keeps between 1d and 365d"]);
    refuses("1d:23h", ["a daily tier keeps between 1d and 365d"]);
    assert.equal(parseRetention("1d:1d").tiers[0]?.keepMs, DAY);
    assert.equal(parseRetention({ "1d": "365d" }).tiers[0]?.keepMs, 365 * DAY);
    assert.equal(parseRetention("1h:24h,1d:8760h").tiers[1]?.keepMs, 365 * DAY);
  });

  void it("refuses empty policies and values of the wrong kind", () => {
    refuses("", ["no tiers"]);
    refuses({}, ["no tiers"]);
    refuses(null, ["expected a string or an object of EVERY: KEEP pairs (got null)"]);
    refuses(["10m:1h"], ["(got an array)"]);
    refuses(42, ["(got number)"]);
    refuses("1.5h:2h,-1m:1h,10M:1h", [
      'EVERY "1.5h" is not a duration',
      'EVERY "-1m" is not a duration',
      'EVERY "10M" is not a duration',
    ]);
    refuses("99999999999w:99999999999w", ['EVERY "99999999999w" is not a duration']);
  });
});

void describe("planRetention properties", () => {
  void it("matches the reference model", () => {
    check(
      fc.property(policyArb, pitsAndNowArb, (policy, { pits, now }) => {
        const plan = planRetention(pits, policy, now);
        assert.deepEqual(plan, referencePlan(pits, policy, now));
        // And its promises, stated on their own.
        const ids = [...plan.keep.map((k) => k.id), ...plan.forget.map((f) => f.id)];
        assert.deepEqual([...ids].sort(), pits.map((p) => p.id).sort());
        assert.ok(plan.forget.every((f) => f.ageMs >= 0));
      }),
      400,
    );
  });

  void it("does not depend on the order of its input", () => {
    const arb = fc
      .tuple(policyArb, pitsAndNowArb)
      .chain(([policy, { pits, now }]) =>
        fc.tuple(
          fc.constant(policy),
          fc.constant(now),
          fc.constant(pits),
          fc.shuffledSubarray(pits, { minLength: pits.length }),
        ),
      );
    check(
      fc.property(arb, ([policy, now, pits, shuffled]) => {
        assert.deepEqual(planRetention(shuffled, policy, now), planRetention(pits, policy, now));
      }),
      200,
    );
  });

  void it("never forgets more when now moves backwards (same PITs)", () => {
    check(
      fc.property(
        policyArb,
        pitsAndNowArb,
        fc.integer({ min: 0, max: 10 * DAY }),
        (policy, { pits, now }, back) => {
          const later = keptIds(planRetention(pits, policy, now));
          const earlier = keptIds(planRetention(pits, policy, now - back));
          assert.ok(isSubset(later, earlier), "kept at now is kept at any earlier now");
        },
      ),
      300,
    );
  });

  void it("forgets nothing more when re-planned at the same or an earlier now", () => {
    check(
      fc.property(
        policyArb,
        pitsAndNowArb,
        fc.integer({ min: 0, max: 10 * DAY }),
        (policy, { pits, now }, back) => {
          const kept = keptIds(planRetention(pits, policy, now));
          const survivors = pits.filter((p) => kept.has(p.id));
          assert.deepEqual(planRetention(survivors, policy, now).forget, []);
          assert.deepEqual(planRetention(survivors, policy, now - back).forget, []);
        },
      ),
      300,
    );
  });
});

// ---------------------------------------------------------------------------
// Simulation: a writer takes PITs by a ManualClock over weeks; after each PIT
// retention runs and what it forgets is deleted.

interface Step {
  /** How far the clock moves before the next PIT; negative steps it back. */
  moveMs: number;
  /** How far the writer's clock is ahead of (or, negative, behind) the planner's. */
  skewMs: number;
  /** PITs written at this step. */
  writes: number;
}

function stepArb(opts: { backwards: boolean }): fc.Arbitrary<Step> {
  const moves = [
    { weight: 30, arbitrary: fc.integer({ min: 9 * MIN, max: 11 * MIN }) },
    { weight: 8, arbitrary: fc.integer({ min: 0, max: 10 * MIN }) },
    { weight: 1, arbitrary: fc.integer({ min: HOUR, max: 2 * DAY }) }, // an outage
  ];
  if (opts.backwards) moves.push({ weight: 1, arbitrary: fc.integer({ min: -12 * HOUR, max: -1 }) });
  return fc.record({
    moveMs: fc.oneof(...moves),
    skewMs: fc.oneof(
      { weight: 12, arbitrary: fc.constant(0) },
      { weight: 1, arbitrary: fc.integer({ min: -3 * HOUR, max: 3 * HOUR }) },
    ),
    writes: fc.oneof(
      { weight: 10, arbitrary: fc.constant(1) },
      { weight: 1, arbitrary: fc.constantFrom(0, 2) },
    ),
  });
}

const simulationArb = (opts: { backwards: boolean }) =>
  fc.record({
    policy: policyArb,
    start: fc.integer({ min: BASE, max: BASE + 365 * DAY }),
    steps: fc.array(stepArb(opts), { minLength: 1_000, maxLength: 1_500 }),
  });

/** Runs of at least two weeks only: shrinking must not trade a real failure for a short run. */
const spansTwoWeeks = (steps: Step[]) => steps.reduce((sum, s) => sum + s.moveMs, 0) >= 2 * WEEK;

interface World {
  now: number;
  /** The highest `now` retention has run at. */
  highWater: number;
  /** What this step's plan was made from. */
  input: RetentionPit[];
  plan: RetentionPlan;
  /** PITs kept by the previous step's plan. */
  keptBefore: Set<string>;
  /** PITs left after this step's plan was applied. */
  present: Map<string, RetentionPit>;
  /** Every PIT ever written, by seq. */
  written: RetentionPit[];
  /** PITs forgotten and deleted. */
  ghosts: RetentionPit[];
}

function simulate(
  policy: RetentionPolicy,
  start: number,
  steps: Step[],
  afterStep: (w: World, step: Step, index: number) => void,
): World {
  const clock = new ManualClock(start);
  const w: World = {
    now: start,
    highWater: start,
    input: [],
    plan: { keep: [], forget: [] },
    keptBefore: new Set(),
    present: new Map(),
    written: [],
    ghosts: [],
  };
  steps.forEach((step, index) => {
    if (step.moveMs >= 0) clock.advance(step.moveMs);
    else clock.set(clock.now() + step.moveMs);
    for (let i = 0; i < step.writes; i++) {
      const seq = w.written.length;
      const pit = { id: `pit-${seq}`, timeMs: clock.now() + step.skewMs, seq };
      w.written.push(pit);
      w.present.set(pit.id, pit);
    }
    w.now = clock.now();
    w.highWater = Math.max(w.highWater, w.now);
    w.keptBefore = keptIds(w.plan);
    w.input = [...w.present.values()];
    w.plan = planRetention(w.input, policy, w.now);
    for (const f of w.plan.forget) {
      const ghost = w.present.get(f.id);
      if (ghost) w.ghosts.push(ghost);
      w.present.delete(f.id);
    }
    afterStep(w, step, index);
  });
  return w;
}

/**
 * The guarantee that holds whichever way the clock steps: for every tier and
 * every bucket, the newest PIT ever written to it is still present while it
 * is young enough against the highest `now` seen; the keepLast PITs written
 * last are present. Call after every step.
 */
function coverageChecker(policy: RetentionPolicy): (w: World) => void {
  const newest = policy.tiers.map(() => new Map<number, RetentionPit>());
  let seen = 0;
  return (w) => {
    for (const p of w.written.slice(seen)) {
      policy.tiers.forEach((t, i) => {
        const b = Math.floor(p.timeMs / t.everyMs);
        const cur = newest[i]?.get(b);
        if (cur === undefined || refNewer(p, cur)) newest[i]?.set(b, p);
      });
    }
    seen = w.written.length;
    policy.tiers.forEach((t, i) => {
      for (const [b, p] of newest[i] ?? []) {
        // The high-water mark never goes down, so a bucket too old now stays too old.
        if (w.highWater - p.timeMs > t.keepMs) newest[i]?.delete(b);
        else if (!w.present.has(p.id))
          assert.fail(`${p.id}, the newest of its ${refLabel(t)} bucket, is gone`);
      }
    });
    for (const p of w.written.slice(-policy.keepLast))
      assert.ok(w.present.has(p.id), `${p.id} is among the latest`);
  };
}

/**
 * No deletion is ever regretted: planning with the deleted PITs put back
 * keeps none of them. (Keeping none of them together is the same as keeping
 * none of them one at a time: a put-back PIT that would be kept alone is
 * kept, or outranked by another put-back PIT that is kept.)
 */
function assertNoRegret(w: World, policy: RetentionPolicy): void {
  const again = planRetention([...w.present.values(), ...w.ghosts], policy, w.now);
  const ghostIds = new Set(w.ghosts.map((g) => g.id));
  const regretted = again.keep.filter((k) => ghostIds.has(k.id));
  assert.deepEqual(regretted, [], `at now=${w.now} a deleted PIT would be kept again`);
}

/**
 * The same question, answered from the rules rather than by planRetention,
 * cheaply enough to ask for every deleted PIT at every step: put back alone,
 * would it be in the future, among the keepLast latest, or the newest of its
 * bucket in a tier it is young enough for?
 */
function assertNoRegretByRules(w: World, policy: RetentionPolicy): void {
  const present = [...w.present.values()];
  // The keepLast-th latest present PIT: a deleted PIT written after it would be among the latest.
  const threshold = [...present].sort((a, b) => (refLater(a, b) ? -1 : 1))[policy.keepLast - 1];
  const newest = policy.tiers.map((t) => {
    const m = new Map<number, RetentionPit>();
    for (const p of present) {
      const b = Math.floor(p.timeMs / t.everyMs);
      const cur = m.get(b);
      if (cur === undefined || refNewer(p, cur)) m.set(b, p);
    }
    return m;
  });
  for (const g of w.ghosts) {
    if (g.timeMs > w.now) assert.fail(`${g.id} was deleted and is in the future at now=${w.now}`);
    if (threshold === undefined || refLater(g, threshold)) {
      assert.fail(`${g.id} was deleted and is among the latest`);
    }
    for (const [i, t] of policy.tiers.entries()) {
      if (w.now - g.timeMs > t.keepMs) continue;
      const rival = newest[i]?.get(Math.floor(g.timeMs / t.everyMs));
      if (rival === undefined || !refNewer(rival, g)) {
        assert.fail(
          `${g.id} was deleted and would be the newest of its ${refLabel(t)} bucket at now=${w.now}`,
        );
      }
    }
  }
}

/**
 * A PIT kept by the previous step and forgotten now lost every reason it had:
 * it is no longer in the future, keepLast later PITs are present, and in each
 * tier it is too old or a newer PIT of its bucket is kept.
 */
function assertLegitimatelyForgotten(w: World, policy: RetentionPolicy): void {
  const present = [...w.present.values()];
  for (const f of w.plan.forget) {
    const p = w.written[Number(f.id.slice("pit-".length))];
    assert.ok(p !== undefined && p.id === f.id);
    if (!w.keptBefore.has(p.id)) continue;
    assert.ok(p.timeMs <= w.now, `${p.id} was forgotten while in the future`);
    assert.ok(
      present.filter((q) => refLater(q, p)).length >= policy.keepLast,
      `${p.id} was among the latest`,
    );
    for (const t of policy.tiers) {
      const aged = w.now - p.timeMs > t.keepMs;
      const bucket = Math.floor(p.timeMs / t.everyMs);
      const superseded = present.some((q) => Math.floor(q.timeMs / t.everyMs) === bucket && refNewer(q, p));
      if (!aged && !superseded)
        assert.fail(`${p.id} left tier ${refLabel(t)} neither aged out nor superseded`);
    }
  }
}

void describe("retention over weeks of PITs (ManualClock)", () => {
  void it("with a clock that only moves forward: kept or legitimately aged out, never regretted", () => {
    check(
      fc.property(simulationArb({ backwards: false }), ({ policy, start, steps }) => {
        fc.pre(spansTwoWeeks(steps));
        const coverage = coverageChecker(policy);
        const w = simulate(policy, start, steps, (w, _step, i) => {
          if (i % 25 === 0) assert.deepEqual(w.plan, referencePlan(w.input, policy, w.now));
          assertLegitimatelyForgotten(w, policy);
          coverage(w);
          assertNoRegretByRules(w, policy);
          if (i % 100 === 0) assertNoRegret(w, policy);
        });
        assertNoRegret(w, policy);
      }),
      8,
      60_000,
    );
  });

  void it("with a clock that steps back and skewed writers: nothing young against the high-water mark is lost", () => {
    check(
      fc.property(simulationArb({ backwards: true }), ({ policy, start, steps }) => {
        fc.pre(spansTwoWeeks(steps));
        const coverage = coverageChecker(policy);
        simulate(policy, start, steps, (w, step, i) => {
          if (i % 25 === 0) assert.deepEqual(w.plan, referencePlan(w.input, policy, w.now));
          assertLegitimatelyForgotten(w, policy);
          coverage(w);
          // A step back with no new PIT forgets nothing.
          if (step.moveMs < 0 && step.writes === 0) assert.deepEqual(w.plan.forget, []);
        });
      }),
      15,
      60_000,
    );
  });
});
