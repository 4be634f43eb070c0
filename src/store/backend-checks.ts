import { randomBytes } from "node:crypto";
import { isLifeboatError, systemClock, type Clock } from "../base/index.js";
import type { Backend, ObjectInfo } from "./backend.js";

/**
 * The backend contract (backend.ts) as named checks. The test suite runs them
 * against every implementation (test/store/backend-contract.ts), and
 * `lifeboat store validate-backend URL` runs them against an operator's real
 * storage before a repository is put there.
 *
 * Each check works under a fresh `validate-<random>/` prefix and deletes what
 * it wrote, also when it fails, so it is safe on a bucket in use.
 */
export interface BackendCheck {
  name: string;
  run(backend: Backend): Promise<void>;
}

export interface BackendCheckResult {
  name: string;
  ok: boolean;
  /** Why the check failed; absent when it passed. */
  detail?: string;
  ms: number;
}

/** A broken promise of the contract; the message says which and how. */
export class ContractViolation extends Error {
  override readonly name = "ContractViolation";
}

const MiB = 1024 * 1024;

export const backendChecks: readonly BackendCheck[] = [
  check("put and get an empty object", async (b, p) => {
    await b.put(`${p}empty`, new Uint8Array(0));
    expectBytes(await b.get(`${p}empty`), Buffer.alloc(0), `get(${p}empty)`);
    expectSize(await b.stat(`${p}empty`), 0, `${p}empty`);
  }),

  check("put and get a 1-byte object", async (b, p) => {
    await b.put(`${p}one`, Buffer.from([0x5a]));
    expectBytes(await b.get(`${p}one`), Buffer.from([0x5a]), `get(${p}one)`);
    expectSize(await b.stat(`${p}one`), 1, `${p}one`);
  }),

  check("a durable put (a head's) replaces an object and reads back at once", async (b, p) => {
    await b.put(`${p}durable`, Buffer.from("first"));
    await b.put(`${p}durable`, Buffer.from("second"), { durable: true });
    expectBytes(await b.get(`${p}durable`), Buffer.from("second"), `get(${p}durable)`);
  }),

  check("put and get a 5 MiB object", async (b, p) => {
    const data = randomBytes(5 * MiB);
    await b.put(`${p}big`, data);
    expectBytes(await b.get(`${p}big`), data, `get(${p}big)`);
    expectSize(await b.stat(`${p}big`), data.length, `${p}big`);
  }),

  check("ranged get from the middle", async (b, p) => {
    const data = randomBytes(1000);
    await b.put(`${p}obj`, data);
    expectBytes(await b.get(`${p}obj`, { offset: 100, length: 250 }), data.subarray(100, 350), "get 100+250");
    expectBytes(await b.get(`${p}obj`, { offset: 0, length: 1 }), data.subarray(0, 1), "get 0+1");
    expectBytes(await b.get(`${p}obj`, { offset: 999, length: 1 }), data.subarray(999), "get 999+1");
  }),

  check("ranged get to the end", async (b, p) => {
    const data = randomBytes(1000);
    await b.put(`${p}obj`, data);
    expectBytes(await b.get(`${p}obj`, { offset: 900, length: 100 }), data.subarray(900), "get 900+100");
    expectBytes(await b.get(`${p}obj`, { offset: 0, length: 1000 }), data, "get 0+1000");
  }),

  check("ranged get past the end returns the bytes that exist", async (b, p) => {
    const data = randomBytes(1000);
    await b.put(`${p}obj`, data);
    expectBytes(await b.get(`${p}obj`, { offset: 950, length: 100 }), data.subarray(950), "get 950+100");
    expectBytes(await b.get(`${p}obj`, { offset: 1000, length: 10 }), Buffer.alloc(0), "get 1000+10");
  }),

  check("stat of a present object", async (b, p) => {
    await b.put(`${p}obj`, randomBytes(123));
    const info = await b.stat(`${p}obj`);
    expectSize(info, 123, `${p}obj`);
    if (info?.name !== `${p}obj`) fail(`stat(${p}obj) named it ${JSON.stringify(info?.name)}`);
    if (!Number.isFinite(info.mtimeMs) || info.mtimeMs < 0) {
      fail(`stat(${p}obj) gave mtimeMs ${info.mtimeMs}; expected milliseconds since the epoch`);
    }
  }),

  check("stat of a missing object is undefined", async (b, p) => {
    const info = await b.stat(`${p}absent`);
    if (info !== undefined) fail(`stat(${p}absent) of a never-written object gave ${JSON.stringify(info)}`);
  }),

  check("get of a missing object throws STORE_OBJECT_MISSING", async (b, p) => {
    await expectCode(b.get(`${p}absent`), "STORE_OBJECT_MISSING", `get(${p}absent)`);
    await expectCode(b.get(`${p}absent`, { offset: 0, length: 10 }), "STORE_OBJECT_MISSING", "ranged get");
  }),

  check("overwrite replaces the whole object", async (b, p) => {
    await b.put(`${p}obj`, randomBytes(4096));
    const second = randomBytes(10);
    await b.put(`${p}obj`, second);
    expectBytes(await b.get(`${p}obj`), second, `get(${p}obj) after a shorter overwrite`);
    expectSize(await b.stat(`${p}obj`), 10, `${p}obj`);
    const listed = await collect(b, p);
    if (listed.length !== 1 || listed[0]?.size !== 10) {
      fail(`list(${p}) after an overwrite gave ${describeList(listed)}; expected one object of 10 bytes`);
    }
  }),

  check("list by prefix finds nested names", async (b, p) => {
    const sizes = { "a/b/c": 3, "a/b/d": 4, "a/e": 5, f: 6 };
    for (const [n, size] of Object.entries(sizes)) await b.put(p + n, randomBytes(size));
    await expectListing(b, `${p}a/`, { [`${p}a/b/c`]: 3, [`${p}a/b/d`]: 4, [`${p}a/e`]: 5 });
    await expectListing(b, `${p}a/b/`, { [`${p}a/b/c`]: 3, [`${p}a/b/d`]: 4 });
    await expectListing(b, p, Object.fromEntries(Object.entries(sizes).map(([n, s]) => [p + n, s])));
  }),

  check("list by a prefix that is part of a name", async (b, p) => {
    for (const n of ["data/abc1", "data/abc2", "data/abd", "data/b", "database"]) {
      await b.put(p + n, Buffer.from(n));
    }
    await expectListing(b, `${p}data/abc`, { [`${p}data/abc1`]: 9, [`${p}data/abc2`]: 9 });
    await expectListing(b, `${p}data/ab`, {
      [`${p}data/abc1`]: 9,
      [`${p}data/abc2`]: 9,
      [`${p}data/abd`]: 8,
    });
    await expectListing(b, `${p}dat`, {
      [`${p}data/abc1`]: 9,
      [`${p}data/abc2`]: 9,
      [`${p}data/abd`]: 8,
      [`${p}data/b`]: 6,
      [`${p}database`]: 8,
    });
  }),

  check("list of a prefix with no objects is empty", async (b, p) => {
    await b.put(`${p}x/obj`, Buffer.from("x"));
    await expectListing(b, `${p}y/`, {});
    await expectListing(b, `${p}x/objects`, {});
    await expectListing(b, `${p}never-written/`, {});
  }),

  check("delete removes the object and is idempotent", async (b, p) => {
    await b.put(`${p}obj`, Buffer.from("doomed"));
    await b.put(`${p}keep`, Buffer.from("kept"));
    await b.delete(`${p}obj`);
    if ((await b.stat(`${p}obj`)) !== undefined) fail(`stat(${p}obj) still finds it after delete`);
    await expectCode(b.get(`${p}obj`), "STORE_OBJECT_MISSING", `get(${p}obj) after delete`);
    await expectListing(b, p, { [`${p}keep`]: 4 });
    await b.delete(`${p}obj`).catch((err) => fail(`a second delete(${p}obj) failed: ${explain(err)}`));
    await b
      .delete(`${p}never-written`)
      .catch((err) => fail(`delete of a missing object failed: ${explain(err)}`));
  }),

  check("50 concurrent puts of distinct names all land", async (b, p) => {
    const objects = Array.from({ length: 50 }, (_, i) => ({
      name: `${p}c/${i}`,
      data: randomBytes(1000 + i),
    }));
    await Promise.all(objects.map((o) => b.put(o.name, o.data)));
    await expectListing(b, `${p}c/`, Object.fromEntries(objects.map((o) => [o.name, o.data.length])));
    for (const o of objects) expectBytes(await b.get(o.name), o.data, `get(${o.name})`);
  }),

  check("concurrent puts of one name leave one whole value", async (b, p) => {
    // Each value is one repeated byte, so a torn object shows as mixed bytes.
    const values = Array.from({ length: 8 }, (_, i) => Buffer.alloc(256 * 1024, i + 1));
    await Promise.all(values.map((v) => b.put(`${p}same`, v)));
    const got = await b.get(`${p}same`);
    const whole = values.some((v) => v.equals(got));
    if (!whole) {
      const fills = new Set(got);
      fail(
        `after 8 concurrent puts of ${p}same (256 KiB each) get returned ${got.length} bytes ` +
          `holding ${fills.size} different fill values; expected exactly one put's value`,
      );
    }
  }),

  check("names with many slashes", async (b, p) => {
    const name = `${p}a/b/c/d/e/f/g/h/i/j/k/l/obj`;
    const data = randomBytes(77);
    await b.put(name, data);
    expectBytes(await b.get(name), data, `get(${name})`);
    expectSize(await b.stat(name), 77, name);
    await expectListing(b, `${p}a/b/c/d/e/f/`, { [name]: 77 });
    await expectListing(b, `${p}a/b/c/d/e/f/g/h/i/j/k/l/o`, { [name]: 77 });
    await b.delete(name);
    await expectListing(b, `${p}a/`, {});
  }),

  check("put and get do not share buffers with the caller", async (b, p) => {
    const data = Buffer.from("original");
    await b.put(`${p}obj`, data);
    data.fill(0x21);
    const first = await b.get(`${p}obj`);
    expectBytes(first, Buffer.from("original"), "get after the caller reused its put buffer");
    first.fill(0x21);
    expectBytes(
      await b.get(`${p}obj`),
      Buffer.from("original"),
      "get after the caller changed a returned buffer",
    );
  }),
];

/** Runs every check in turn; one failing does not stop the rest. */
export async function runBackendChecks(
  backend: Backend,
  opts: { clock?: Clock; checks?: readonly BackendCheck[] } = {},
): Promise<{ checks: BackendCheckResult[] }> {
  const clock = opts.clock ?? systemClock;
  const results: BackendCheckResult[] = [];
  for (const c of opts.checks ?? backendChecks) {
    const start = clock.now();
    try {
      await c.run(backend);
      results.push({ name: c.name, ok: true, ms: clock.now() - start });
    } catch (err) {
      results.push({ name: c.name, ok: false, detail: explain(err), ms: clock.now() - start });
    }
  }
  return { checks: results };
}

function check(name: string, body: (backend: Backend, prefix: string) => Promise<void>): BackendCheck {
  return {
    name,
    async run(backend) {
      const prefix = `validate-${randomBytes(6).toString("hex")}/`;
      let failed = false;
      try {
        await body(backend, prefix);
      } catch (err) {
        failed = true;
        throw err;
      } finally {
        // A cleanup failure matters only when it is the sole problem: it leaves litter.
        await cleanUp(backend, prefix).catch((err: unknown) => {
          if (!failed) fail(`cleaning up ${prefix} failed: ${explain(err)}`);
        });
      }
    },
  };
}

async function cleanUp(backend: Backend, prefix: string): Promise<void> {
  for (const o of await collect(backend, prefix)) await backend.delete(o.name);
}

function fail(message: string): never {
  throw new ContractViolation(message);
}

function explain(err: unknown): string {
  if (isLifeboatError(err)) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

function expectBytes(actual: Buffer, expected: Uint8Array, what: string): void {
  if (!Buffer.isBuffer(actual)) fail(`${what} returned ${typeof actual}, not a Buffer`);
  if (actual.length !== expected.length) {
    fail(`${what} returned ${actual.length} bytes; expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) fail(`${what} returned different bytes from offset ${i} on`);
  }
}

function expectSize(info: ObjectInfo | undefined, size: number, name: string): void {
  if (info === undefined) fail(`stat(${name}) found nothing right after put`);
  if (info.size !== size) fail(`stat(${name}) gave size ${info.size}; expected ${size}`);
}

async function expectCode(p: Promise<unknown>, code: string, what: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (isLifeboatError(err, code)) return;
    fail(`${what} threw ${explain(err)}; expected code ${code}`);
  }
  fail(`${what} succeeded; expected code ${code}`);
}

async function collect(backend: Backend, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const o of backend.list(prefix)) out.push(o);
  return out;
}

async function expectListing(
  backend: Backend,
  prefix: string,
  expected: Record<string, number>,
): Promise<void> {
  const listed = await collect(backend, prefix);
  const got = new Map(listed.map((o) => [o.name, o.size]));
  const problems: string[] = [];
  if (got.size !== listed.length) problems.push("some names were listed twice");
  for (const [name, size] of Object.entries(expected)) {
    if (!got.has(name)) problems.push(`${name} is missing`);
    else if (got.get(name) !== size) problems.push(`${name} has size ${got.get(name)}, expected ${size}`);
  }
  for (const name of got.keys()) if (!(name in expected)) problems.push(`${name} should not be listed`);
  for (const o of listed) {
    if (!Number.isFinite(o.mtimeMs)) problems.push(`${o.name} has mtimeMs ${o.mtimeMs}`);
  }
  if (problems.length) fail(`list(${JSON.stringify(prefix)}): ${problems.join("; ")}`);
}

function describeList(listed: ObjectInfo[]): string {
  return listed.length === 0 ? "nothing" : listed.map((o) => `${o.name} (${o.size} bytes)`).join(", ");
}
