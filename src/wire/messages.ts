import { z } from "zod";

/**
 * What travels in frames. Hot or fixed-shape messages (BLOCKS, HAVE_QUERY,
 * HAVE, ACK, PING, PONG) have binary payloads (codec.ts); the rare control
 * messages (HELLO, WELCOME, POINT, POINT_DONE, COMMAND, ERROR) are UTF-8 JSON
 * checked against the schemas below. JSON there is a choice for change: a
 * release may add fields, and the adjacent release reading them drops what
 * it does not know (unknown keys are stripped, never an error), while every
 * field it does know is range-checked.
 */

const u32 = z.number().int().min(0).max(0xffffffff);
const safeUint = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const shortText = z.string().max(256);
const ms = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** Block sizes a disk may use: powers of two from 4 KiB to 1 MiB. */
export const BLOCK_SIZES = [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576] as const;

const diskSchema = z.object({
  index: z.number().int().min(0).max(255),
  /** Stable id of the disk on its server (e.g. by-id path or WWN); for logs and matching. */
  id: shortText.min(1),
  sizeBytes: safeUint,
  blockSize: z
    .number()
    .refine((n) => (BLOCK_SIZES as readonly number[]).includes(n), "a power of two, 4 KiB to 1 MiB"),
});
export type DiskInfo = z.infer<typeof diskSchema>;

export const helloSchema = z.object({
  /** Protocol versions the agent speaks; the replicator picks the highest it shares. */
  versions: z.array(z.number().int().min(1).max(0xffff)).min(1).max(32),
  /** Claims only: the replicator checks them against the client certificate. */
  agent: z.object({ serverId: shortText.min(1), hostname: shortText, version: shortText }),
  disks: z
    .array(diskSchema)
    .max(256)
    .refine((ds) => new Set(ds.map((d) => d.index)).size === ds.length, "disk indexes must be distinct"),
  /**
   * Per disk, the generation id of the data it holds (changed by the control
   * plane at every recovery and failback); absent until the agent learnt it.
   * A replicator refuses a generation that is not the current one.
   */
  generations: z
    .array(
      z.object({
        index: z.number().int().min(0).max(255),
        generation: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
      }),
    )
    .max(256)
    .optional(),
  /** From the last WELCOME; absent on a fresh start. */
  resumeToken: z
    .string()
    .regex(/^[A-Za-z0-9_-]{16,64}$/)
    .optional(),
});
export type Hello = z.infer<typeof helloSchema>;

export const welcomeSchema = z.object({
  version: z.number().int().min(1).max(0xffff),
  resumeToken: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/),
  /** True when the replicator knew the token: the sender keeps its numbering and resends after lastAcked. */
  resumed: z.boolean(),
  /** Highest sequence number durable at the replicator on this stream (0: none). */
  lastAcked: safeUint,
  /** Per disk, the sequence number of the last frame durable for it (0: nothing yet, start with initial sync). */
  disks: z.array(z.object({ index: z.number().int().min(0).max(255), lastAcked: safeUint })).max(256),
  /** What the replicator accepts unacknowledged; the agent's window never exceeds it. */
  window: z.object({
    frames: z.number().int().min(1).max(65536),
    bytes: z
      .number()
      .int()
      .min(1)
      .max(1 << 30),
  }),
  limits: z.object({ maxBlocksPerFrame: z.number().int().min(1).max(0xffff) }),
  /** Interval the replicator pings at; both sides declare the peer dead after heartbeatMisses silent intervals. */
  heartbeatMs: z.number().int().min(10).max(600_000),
  heartbeatMisses: z.number().int().min(2).max(100),
});
export type Welcome = z.infer<typeof welcomeSchema>;

export const CONSISTENCY_LEVELS = ["application", "filesystem", "crash", "none"] as const;
export type ConsistencyLevel = (typeof CONSISTENCY_LEVELS)[number];

export const pointSchema = z.object({
  /** Chosen by the agent; names the point in logs and in POINT_DONE. */
  pointId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  consistency: z.enum(CONSISTENCY_LEVELS),
  takenAt: ms,
  disks: z
    .array(z.object({ index: z.number().int().min(0).max(255), sizeBytes: safeUint }))
    .min(1)
    .max(256),
});
export type Point = z.infer<typeof pointSchema>;

export const pointDoneSchema = z.object({
  pointId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  /** The POINT frame's sequence number. */
  seq: safeUint,
  pitId: shortText.min(1),
});
export type PointDone = z.infer<typeof pointDoneSchema>;

export const commandSchema = z.discriminatedUnion("command", [
  z.object({ id: u32, command: z.literal("make-pit"), consistency: z.enum(CONSISTENCY_LEVELS).optional() }),
  z.object({
    id: u32,
    command: z.literal("rescan"),
    disks: z.array(z.number().int().min(0).max(255)).max(256).optional(),
  }),
  /** Mbit/s; 0 lifts the cap. */
  z.object({ id: u32, command: z.literal("set-bandwidth"), mbps: z.number().min(0).max(1_000_000) }),
]);
export type Command = z.infer<typeof commandSchema>;

export const errorSchema = z.object({
  code: z.string().regex(/^[A-Z][A-Z0-9_]{0,63}$/),
  message: z.string().max(4096),
  hint: z.string().max(4096).optional(),
  /** Whether the receiver of the ERROR should connect again (with backoff) or give up. */
  retryable: z.boolean().optional(),
});
export type WireErrorBody = z.infer<typeof errorSchema>;

export type BlockEncoding = "raw" | "zstd" | "ref" | "zero";

/**
 * One whole block. `sha256` is of the uncompressed block; `data` is the block
 * (raw), its zstd frame (zstd), or empty: `ref` means "the block whose hash
 * this is, which you told me you hold" (HAVE), `zero` an all-zero block.
 */
export interface Block {
  encoding: BlockEncoding;
  sha256: Buffer;
  data: Buffer;
}

/** Bytes written inside one block: `data` replaces the block's bytes from `at`. */
export interface Patch {
  at: number;
  data: Buffer;
}

/**
 * Blocks of a disk from a block-aligned byte offset. Either whole blocks, the
 * first at `offset` and the rest following it, or patches to the one block at
 * `offset` with the SHA-256 the block has once they are applied, so a
 * replicator whose copy differed finds out instead of storing a wrong block.
 * Patches make bytes on the wire follow bytes written: a 4 KiB write inside
 * a 64 KiB block sends 4 KiB.
 */
export type BlocksMessage =
  | { type: "BLOCKS"; disk: number; offset: number; kind: "blocks"; blocks: Block[] }
  | { type: "BLOCKS"; disk: number; offset: number; kind: "patch"; sha256: Buffer; patches: Patch[] };

export type WireMessage =
  | ({ type: "HELLO" } & Hello)
  | ({ type: "WELCOME" } & Welcome)
  | BlocksMessage
  | { type: "HAVE_QUERY"; id: number; hashes: Buffer[] }
  | { type: "HAVE"; id: number; have: boolean[] }
  | { type: "ACK"; seq: number }
  | ({ type: "POINT" } & Point)
  | ({ type: "POINT_DONE" } & PointDone)
  | { type: "PING"; nonce: number }
  | { type: "PONG"; nonce: number }
  | ({ type: "COMMAND" } & Command)
  | ({ type: "ERROR" } & WireErrorBody);

export type MessageOf<T extends WireMessage["type"]> = Extract<WireMessage, { type: T }>;

/** Messages applied exactly once and in order; they carry sequence numbers. */
export type SequencedMessage = BlocksMessage | MessageOf<"POINT">;
