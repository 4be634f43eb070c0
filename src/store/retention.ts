/**
 * Retention: which point-in-time snapshots (PITs) of one server to keep.
 *
 * A policy is a list of tiers, finest first, each "one PIT per `everyMs`,
 * kept for `keepMs`", plus `keepLast`, how many of the latest PITs are always
 * kept. planRetention is a pure function of (PITs, policy, now): it reads no
 * clock and does no I/O, so it is tested over weeks in milliseconds, and the
 * caller deletes what it returns under `forget` (two-phase, with its own
 * safety margins).
 *
 * The rules, for `age = nowMs - timeMs`:
 * - future: a PIT dated after `nowMs` (the clock stepped back, or a writer's
 *   clock runs ahead) is kept.
 * - keepLast: the `keepLast` PITs with the highest `seq` are kept. "Latest"
 *   is replication order, not timestamp order, so the PIT written last
 *   survives even when the writer's clock stepped back.
 * - tiers: for each tier, the PITs with `age <= keepMs` (future ones
 *   included, their age is negative) are grouped into buckets of width
 *   `everyMs` aligned to the epoch, `floor(timeMs / everyMs)`, and the newest
 *   PIT of each bucket is kept. Newest is by `timeMs`, then `seq`, then `id`.
 *
 * Why these rules are safe to apply again and again. A PIT's rivals in its
 * bucket are at least as young as it is, so they are eligible whenever it is;
 * a tier therefore keeps "the newest PIT of each bucket, while young enough",
 * whatever else is in the set. From that (checked by
 * test/store/retention.test.ts):
 * - For the same PITs, a PIT kept at `now` is kept at any earlier `now`:
 *   stepping the clock back never forgets more, and re-planning the kept set
 *   at the same or an earlier `now` forgets nothing.
 * - Calls repeated while PITs arrive and forgotten ones are deleted, with `now`
 *   stepping either way: for every tier and bucket, the newest PIT ever
 *   written to it survives while it is young enough against the highest `now`
 *   seen so far, and the `keepLast` highest-`seq` PITs ever written survive.
 *   With a non-decreasing `now`, no forgotten PIT would be kept by a later
 *   call had it not been deleted.
 * What no pure function can promise: a PIT aged out and deleted is gone if
 * the clock then steps back, and a clock stepped far forward ages out all but
 * `keepLast` and future PITs; guarding the clock is the caller's job.
 */
import { LifeboatError } from "../base/index.js";

export interface RetentionTier {
  /** Width of the buckets, in milliseconds; one PIT is kept per bucket. */
  readonly everyMs: number;
  /** How old a PIT may be and still be kept by this tier, in milliseconds. */
  readonly keepMs: number;
}

export interface RetentionPolicy {
  /** Finest first: `everyMs` strictly increasing. */
  readonly tiers: readonly RetentionTier[];
  /** How many PITs with the highest `seq` are always kept; at least 1. */
  readonly keepLast: number;
}

/** A PIT as retention sees it. `id`s are unique within one call. */
export interface RetentionPit {
  readonly id: string;
  /** When the PIT was taken, milliseconds since the epoch, by the writer's clock. */
  readonly timeMs: number;
  /** The writer's sequence number: higher was written later. */
  readonly seq: number;
}

export interface RetentionPlan {
  /** Newest first; `reasons` name the rules that keep it ("future", "keepLast", "10m:1h"). */
  keep: { id: string; reasons: string[] }[];
  /** Newest first; `ageMs` is never negative (future PITs are kept). */
  forget: { id: string; ageMs: number }[];
}

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
const DAY_MS = UNIT_MS.d;
const MAX_DAILY_KEEP_DAYS = 365;

const tier = (everyMs: number, keepMs: number): RetentionTier => Object.freeze({ everyMs, keepMs });

/** As AWS Elastic Disaster Recovery: every 10 minutes for an hour, hourly for a day, daily for a week. */
export const DEFAULT_RETENTION: RetentionPolicy = Object.freeze({
  tiers: Object.freeze([
    tier(10 * UNIT_MS.m, UNIT_MS.h),
    tier(UNIT_MS.h, 24 * UNIT_MS.h),
    tier(DAY_MS, 7 * DAY_MS),
  ]),
  keepLast: 1,
});

const RETENTION_HINT =
  'write tiers as EVERY:KEEP from the finest to the coarsest, e.g. "10m:1h,1h:24h,1d:7d" or ' +
  '{"10m":"1h","1h":"24h","1d":"7d"}; units s, m, h, d, w; KEEP at least EVERY; ' +
  `a daily tier (1d) keeps 1d to ${MAX_DAILY_KEEP_DAYS}d`;

/**
 * Reads a policy written as `{ "10m": "1h", "1h": "24h" }` or
 * `"10m:1h,1h:24h"`. Every problem is reported at once in one
 * RETENTION_INVALID error. The result is frozen; keepLast is 1.
 */
export function parseRetention(spec: unknown): RetentionPolicy {
  const problems: string[] = [];
  const pairs = specPairs(spec, problems);
  const labels = pairs.map(([every, keep]) => `${every}:${keep}`);
  const tiers = pairs.map(([every, keep], i): RetentionTier | undefined => {
    const where = `tier ${i + 1} "${labels[i]}"`;
    const everyMs = parseDuration(every, `${where}: EVERY`, problems);
    const keepMs = parseDuration(keep, `${where}: KEEP`, problems);
    return everyMs === undefined || keepMs === undefined ? undefined : tier(everyMs, keepMs);
  });
  problems.push(...policyProblems(tiers, 1, labels, problems.length === 0));
  if (problems.length > 0) throw invalid(`retention policy ${JSON.stringify(spec)}`, problems);
  return Object.freeze({ tiers: Object.freeze(tiers.filter((t) => t !== undefined)), keepLast: 1 });
}

/** Throws RETENTION_INVALID listing every problem of a policy built in code. */
export function validateRetention(policy: RetentionPolicy): void {
  const problems = policyProblems(policy.tiers, policy.keepLast, policy.tiers.map(tierLabel), true);
  if (problems.length > 0) throw invalid(`retention policy ${formatPolicy(policy)}`, problems);
}

/** "10m:1h,1h:1d,1d:7d (keepLast 1)": a policy for messages and logs. */
export function formatPolicy(policy: RetentionPolicy): string {
  const tiers = policy.tiers.map(tierLabel).join(",");
  return `${tiers || "(no tiers)"} (keepLast ${policy.keepLast})`;
}

/**
 * Decides which PITs to keep at `nowMs` (see the rules at the top of this
 * file). Every input PIT is in exactly one of `keep` and `forget`; the order
 * of the input does not matter and the output is the same for the same set.
 * Throws RETENTION_INVALID for a bad policy and RETENTION_INPUT_INVALID for
 * duplicate ids or times that are not finite numbers.
 */
export function planRetention(
  pits: readonly RetentionPit[],
  policy: RetentionPolicy,
  nowMs: number,
): RetentionPlan {
  validateRetention(policy);
  checkInput(pits, nowMs);
  const byNewest = [...pits].sort((a, b) => newer(b, a));
  const reasons = new Map<string, string[]>(byNewest.map((p) => [p.id, []]));
  const why = (p: RetentionPit, reason: string) => reasons.get(p.id)?.push(reason);

  for (const p of byNewest) if (p.timeMs > nowMs) why(p, "future");
  const bySeq = [...pits].sort((a, b) => later(b, a));
  for (const p of bySeq.slice(0, policy.keepLast)) why(p, "keepLast");
  for (const t of policy.tiers) {
    const label = tierLabel(t);
    const seen = new Set<number>();
    // Newest first, so the first PIT met in a bucket is its newest; older
    // PITs only get older, so the walk stops at the first one too old.
    for (const p of byNewest) {
      if (nowMs - p.timeMs > t.keepMs) break;
      const bucket = Math.floor(p.timeMs / t.everyMs);
      if (seen.has(bucket)) continue;
      seen.add(bucket);
      why(p, label);
    }
  }

  const plan: RetentionPlan = { keep: [], forget: [] };
  for (const p of byNewest) {
    const r = reasons.get(p.id) ?? [];
    if (r.length > 0) plan.keep.push({ id: p.id, reasons: r });
    else plan.forget.push({ id: p.id, ageMs: nowMs - p.timeMs });
  }
  return plan;
}

/** > 0 when `a` is newer than `b`: by time, then seq, then id. Ids are unique, so never 0 for two PITs. */
function newer(a: RetentionPit, b: RetentionPit): number {
  return a.timeMs - b.timeMs || a.seq - b.seq || compareIds(a.id, b.id);
}

/** > 0 when `a` was written after `b`: by seq, then time, then id. */
function later(a: RetentionPit, b: RetentionPit): number {
  return a.seq - b.seq || a.timeMs - b.timeMs || compareIds(a.id, b.id);
}

// Code-unit order, not localeCompare: the plan must not depend on the locale.
const compareIds = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Every rule a policy breaks. A tier that did not parse is `undefined` and
 * skipped (its syntax was reported); `labels` name the tiers as written.
 */
function policyProblems(
  tiers: readonly (RetentionTier | undefined)[],
  keepLast: number,
  labels: readonly string[],
  checkEmpty: boolean,
): string[] {
  const problems: string[] = [];
  if (!Number.isSafeInteger(keepLast) || keepLast < 1) {
    problems.push(`keepLast must be a whole number of at least 1 (got ${keepLast})`);
  }
  if (checkEmpty && tiers.length === 0) problems.push("no tiers: give at least one EVERY:KEEP pair");
  let prev: { everyMs: number; label: string } | undefined;
  tiers.forEach((t, i) => {
    if (t === undefined) return;
    const label = labels[i] ?? tierLabel(t);
    const where = `tier ${i + 1} "${label}"`;
    if (!isDuration(t.everyMs) || !isDuration(t.keepMs)) {
      problems.push(`${where}: EVERY and KEEP must be whole numbers of milliseconds, 0 or more`);
      return;
    }
    if (t.everyMs === 0) {
      problems.push(`${where}: EVERY must be more than 0`);
    } else if (t.everyMs === DAY_MS) {
      if (t.keepMs < DAY_MS || t.keepMs > MAX_DAILY_KEEP_DAYS * DAY_MS) {
        problems.push(`${where}: a daily tier keeps between 1d and ${MAX_DAILY_KEEP_DAYS}d`);
      }
    } else if (t.keepMs < t.everyMs) {
      problems.push(`${where}: KEEP must be at least EVERY`);
    }
    if (prev !== undefined && t.everyMs <= prev.everyMs) {
      problems.push(
        `${where}: tiers go from the finest EVERY to the coarsest; it comes after "${prev.label}"`,
      );
    }
    prev = { everyMs: t.everyMs, label };
  });
  return problems;
}

const isDuration = (ms: number): boolean => Number.isSafeInteger(ms) && ms >= 0;

/** The spec as [EVERY, KEEP] strings, in the order written. */
function specPairs(spec: unknown, problems: string[]): [string, string][] {
  if (typeof spec === "string") {
    if (spec.trim() === "") return [];
    return spec.split(",").flatMap((entry, i): [string, string][] => {
      const parts = entry.split(":").map((s) => s.trim());
      const [every, keep] = parts;
      if (parts.length === 2 && every !== undefined && keep !== undefined) return [[every, keep]];
      problems.push(`entry ${i + 1} "${entry.trim()}": expected EVERY:KEEP, e.g. 10m:1h`);
      return [];
    });
  }
  if (typeof spec === "object" && spec !== null && !Array.isArray(spec)) {
    const entries = Object.entries(spec as Record<string, unknown>);
    return entries.flatMap(([every, keep]): [string, string][] => {
      if (typeof keep === "string") return [[every, keep]];
      problems.push(`tier "${every}": KEEP must be a string like "24h" (got ${JSON.stringify(keep)})`);
      return [];
    });
  }
  problems.push(`expected a string or an object of EVERY: KEEP pairs (got ${kindOf(spec)})`);
  return [];
}

function parseDuration(text: string, what: string, problems: string[]): number | undefined {
  const m = /^(\d+)([smhdw])$/.exec(text);
  const n = m?.[1];
  const unit = m?.[2] as keyof typeof UNIT_MS | undefined;
  const ms = n !== undefined && unit !== undefined ? Number(n) * UNIT_MS[unit] : undefined;
  if (ms === undefined || !Number.isSafeInteger(ms)) {
    problems.push(`${what} "${text}" is not a duration like 10m, 24h or 7d`);
    return undefined;
  }
  return ms;
}

function kindOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v;
}

function tierLabel(t: RetentionTier): string {
  return `${formatDuration(t.everyMs)}:${formatDuration(t.keepMs)}`;
}

/** The largest of d, h, m, s that divides `ms` exactly ("1d", "90m"); else milliseconds ("1500ms"). */
function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m", "s"] as const) {
    const size = UNIT_MS[unit];
    if (ms !== 0 && Number.isSafeInteger(ms) && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

function checkInput(pits: readonly RetentionPit[], nowMs: number): void {
  const problems: string[] = [];
  if (!Number.isFinite(nowMs)) problems.push(`now is not a finite number of milliseconds (got ${nowMs})`);
  const ids = new Set<string>();
  for (const p of pits) {
    if (ids.has(p.id)) problems.push(`PIT ${p.id} is listed twice`);
    ids.add(p.id);
    if (!Number.isFinite(p.timeMs) || !Number.isFinite(p.seq)) {
      problems.push(`PIT ${p.id} has time ${p.timeMs} and seq ${p.seq}; both must be finite numbers`);
    }
  }
  if (problems.length === 0) return;
  const shown = problems.slice(0, 5).join("; ");
  const more = problems.length > 5 ? `; and ${problems.length - 5} more` : "";
  throw new LifeboatError("RETENTION_INPUT_INVALID", `cannot plan retention: ${shown}${more}`, {
    hint: "PIT ids must be unique and times finite; the caller built a bad PIT list, a bug worth reporting",
  });
}

function invalid(what: string, problems: string[]): LifeboatError {
  return new LifeboatError("RETENTION_INVALID", `${what} is invalid: ${problems.join("; ")}`, {
    hint: RETENTION_HINT,
  });
}
