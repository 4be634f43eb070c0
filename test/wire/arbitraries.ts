/**
 * fast-check arbitraries for wire messages, and the shared-seed runner the
 * wire's property tests use (LIFEBOAT_SEED=<seed> replays a run).
 */
import fc from "fast-check";
import { seedFromEnv } from "../support/images.js";
import { BLOCK_SIZES, CONSISTENCY_LEVELS, type WireMessage } from "../../src/wire/index.js";

export const SEED = seedFromEnv();
console.log(`wire properties: seed ${SEED} (replay with LIFEBOAT_SEED=${SEED})`);

export function check<Ts extends [unknown, ...unknown[]]>(
  prop: fc.IProperty<Ts> | fc.IAsyncProperty<Ts>,
  numRuns: number,
): Promise<void> | void {
  const params = { seed: SEED, numRuns };
  const label = (err: unknown): never => {
    if (err instanceof Error) err.message = `replay with LIFEBOAT_SEED=${SEED}\n${err.message}`;
    throw err;
  };
  try {
    const r = fc.assert(prop as fc.IAsyncProperty<Ts>, params);
    return r instanceof Promise ? r.catch(label) : r;
  } catch (err) {
    return label(err);
  }
}

const hash = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a));
const bytes = (min: number, max: number) =>
  fc.uint8Array({ minLength: min, maxLength: max }).map((a) => Buffer.from(a));
const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const token = fc.stringMatching(/^[A-Za-z0-9_-]{16,64}$/);
const text = fc.string({ maxLength: 40 });
const diskIndex = fc.integer({ min: 0, max: 255 });

const block = fc.oneof(
  fc.record({
    encoding: fc.constantFrom("raw" as const, "zstd" as const),
    sha256: hash,
    data: bytes(1, 300),
  }),
  fc.record({
    encoding: fc.constantFrom("ref" as const, "zero" as const),
    sha256: hash,
    data: fc.constant(Buffer.alloc(0)),
  }),
);

/** Sorted, non-overlapping patches inside a 64 KiB block. */
const patches = fc
  .array(fc.record({ gap: fc.integer({ min: 0, max: 5000 }), data: bytes(1, 200) }), {
    minLength: 1,
    maxLength: 8,
  })
  .map((ps) => {
    let at = 0;
    return ps.map((p) => {
      const patch = { at: at + p.gap, data: p.data };
      at = patch.at + p.data.length;
      return patch;
    });
  });

export const blocksMessage = fc.oneof(
  fc.record({
    type: fc.constant("BLOCKS" as const),
    disk: diskIndex,
    offset: safe,
    kind: fc.constant("blocks" as const),
    blocks: fc.array(block, { minLength: 1, maxLength: 5 }),
  }),
  fc.record({
    type: fc.constant("BLOCKS" as const),
    disk: diskIndex,
    offset: safe,
    kind: fc.constant("patch" as const),
    sha256: hash,
    patches,
  }),
);

export const pointMessage = fc.record({
  type: fc.constant("POINT" as const),
  pointId: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
  consistency: fc.constantFrom(...CONSISTENCY_LEVELS),
  takenAt: safe,
  disks: fc.array(fc.record({ index: diskIndex, sizeBytes: safe }), { minLength: 1, maxLength: 4 }),
});

const disks = fc.uniqueArray(
  fc.record({
    index: diskIndex,
    id: fc.string({ minLength: 1, maxLength: 30 }),
    sizeBytes: safe,
    blockSize: fc.constantFrom(...BLOCK_SIZES),
  }),
  {
    selector: (d) => d.index,
    maxLength: 4,
  },
);

export const anyMessage: fc.Arbitrary<WireMessage> = fc.oneof(
  fc.record(
    {
      type: fc.constant("HELLO" as const),
      versions: fc.array(fc.integer({ min: 1, max: 0xffff }), { minLength: 1, maxLength: 5 }),
      agent: fc.record({
        serverId: fc.string({ minLength: 1, maxLength: 30 }),
        hostname: text,
        version: text,
      }),
      disks,
      resumeToken: token,
    },
    { requiredKeys: ["type", "versions", "agent", "disks"] },
  ),
  fc.record({
    type: fc.constant("WELCOME" as const),
    version: fc.integer({ min: 1, max: 0xffff }),
    resumeToken: token,
    resumed: fc.boolean(),
    lastAcked: safe,
    disks: fc.array(fc.record({ index: diskIndex, lastAcked: safe }), { maxLength: 4 }),
    window: fc.record({
      frames: fc.integer({ min: 1, max: 65536 }),
      bytes: fc.integer({ min: 1, max: 1 << 30 }),
    }),
    limits: fc.record({ maxBlocksPerFrame: fc.integer({ min: 1, max: 0xffff }) }),
    heartbeatMs: fc.integer({ min: 10, max: 600_000 }),
    heartbeatMisses: fc.integer({ min: 2, max: 100 }),
  }),
  blocksMessage,
  fc.record({
    type: fc.constant("HAVE_QUERY" as const),
    id: fc.nat({ max: 0xffffffff }),
    hashes: fc.array(hash, { minLength: 1, maxLength: 20 }),
  }),
  fc.record({
    type: fc.constant("HAVE" as const),
    id: fc.nat({ max: 0xffffffff }),
    have: fc.array(fc.boolean(), { maxLength: 40 }),
  }),
  fc.record({ type: fc.constant("ACK" as const), seq: safe }),
  pointMessage,
  fc.record({
    type: fc.constant("POINT_DONE" as const),
    pointId: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
    seq: safe,
    pitId: fc.string({ minLength: 1, maxLength: 40 }),
  }),
  fc.record({ type: fc.constant("PING" as const), nonce: safe }),
  fc.record({ type: fc.constant("PONG" as const), nonce: safe }),
  fc.oneof(
    fc.record({
      type: fc.constant("COMMAND" as const),
      id: fc.nat({ max: 0xffffffff }),
      command: fc.constant("make-pit" as const),
      consistency: fc.constantFrom(...CONSISTENCY_LEVELS),
    }),
    fc.record({
      type: fc.constant("COMMAND" as const),
      id: fc.nat({ max: 0xffffffff }),
      command: fc.constant("rescan" as const),
    }),
    fc.record({
      type: fc.constant("COMMAND" as const),
      id: fc.nat({ max: 0xffffffff }),
      command: fc.constant("set-bandwidth" as const),
      mbps: fc.integer({ min: 0, max: 10000 }),
    }),
  ),
  fc.record(
    {
      type: fc.constant("ERROR" as const),
      code: fc.stringMatching(/^[A-Z][A-Z0-9_]{0,20}$/),
      message: text,
      hint: text,
      retryable: fc.boolean(),
    },
    { requiredKeys: ["type", "code", "message"] },
  ),
);

/** A canonical text of a message (sorted keys, buffers as hex) for comparing decoded with encoded. */
export function canon(x: unknown): string {
  return JSON.stringify(x, (_k, v: unknown) => {
    if (
      v &&
      typeof v === "object" &&
      (v as { type?: unknown }).type === "Buffer" &&
      Array.isArray((v as { data?: unknown }).data)
    ) {
      return Buffer.from((v as { data: number[] }).data).toString("hex");
    }
    if (v && typeof v === "object" && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)));
    }
    return v;
  });
}
