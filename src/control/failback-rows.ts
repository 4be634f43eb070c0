import type { Clock } from "../base/index.js";
import { type BlockMapRef, type Repository } from "../store/index.js";
import { newCommand } from "./command-rows.js";
import { type Database, type Failback, type FailbackState, type Server } from "./db/index.js";
import { httpError } from "./http-error.js";

/** Failback rows and views, shared by the operator side (failback.ts) and the agent side (failback-passes.ts). */

export type PassKind = "full" | "changes" | "verify";

export interface FailbackDisk {
  /** Disk index on the source (the recovered instance). */
  source: number;
  /** Disk index on the target (the original server). */
  target: number;
  sizeBytes: number;
  chunkSize: number;
}

export interface PinDisk extends BlockMapRef {
  index: number;
  sizeBytes: number;
}

export interface Pin {
  pass: number;
  kind: PassKind;
  /** For "changes": the pass whose pin this one is diffed against. */
  fromPass?: number;
  takenAt: number;
  pitId?: string;
  /** The cut-over PIT: the last state the target syncs to. */
  final: boolean;
  disks: PinDisk[];
  /** Chunks the pass goes through: every chunk for full and verify, the differing ones for changes. */
  chunks?: number;
}

export interface Pins {
  passes: Pin[];
  cutover?: { commandId: string; jobId: string; requestedAt: number };
}

export interface PassCounters {
  pass: number;
  kind: PassKind;
  chunksCompared: number;
  chunksSent: number;
  bytesSent: number;
}

export interface Progress {
  completedPass: number;
  bytesSent: number;
  chunksSent: number;
  chunksCompared: number;
  current?: PassCounters;
  /** When the target last was confirmed equal to the source's replica. */
  inSyncAt?: number;
  /** A pass whose pin could no longer be read: the next pass is a full one. */
  stalePass?: number;
  verify?: { pass: number; chunks: number; mismatched: number };
  error?: { code: string; message: string; at: number };
}

export interface FailbackView {
  id: string;
  jobId: string;
  state: FailbackState;
  source: { id: string; name: string };
  target: { id: string; name: string };
  disks: FailbackDisk[];
  pass: number;
  passKind: PassKind | null;
  completedPass: number;
  /** Seconds since the target was last confirmed equal to the source (null before the first pass ended). */
  lagSeconds: number | null;
  /**
   * What the current pass still has to go through (chunks, and their bytes at
   * most): to compare in a full or verify pass, to send in a changes pass; 0
   * when the target holds the latest pinned state; null once it ended.
   */
  backlog: { chunks: number; bytes: number } | null;
  bytesSent: number;
  chunksSent: number;
  chunksCompared: number;
  cutoverPitId: string | null;
  verify: { pass: number; chunks: number; mismatched: number } | null;
  error: { code: string; message: string } | null;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

export interface FailbackDeps {
  database: Database;
  clock: Clock;
  repo: () => Promise<Repository>;
}

export const ACTIVE: readonly FailbackState[] = ["syncing", "cutover"];
export async function failbackByKey(database: Database, key: string): Promise<Failback> {
  const row = await database.db
    .selectFrom("failbacks")
    .selectAll()
    .where((eb) => eb.or([eb("id", "=", key), eb("job_id", "=", key)]))
    .orderBy("created_at", "desc")
    .executeTakeFirst();
  if (!row)
    throw httpError(
      404,
      "FAILBACK_NOT_FOUND",
      `no failback ${key}`,
      "list failbacks with `lifeboat failback list`",
    );
  return row;
}

export async function ownFailback(database: Database, id: string, serverId: string): Promise<Failback> {
  const row = await database.db.selectFrom("failbacks").selectAll().where("id", "=", id).executeTakeFirst();
  if (!row || row.target_server_id !== serverId)
    throw httpError(404, "FAILBACK_NOT_FOUND", `no failback ${id} for this server`, "");
  return row;
}

export async function serverById(database: Database, id: string): Promise<Server> {
  return database.db.selectFrom("servers").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
}

export async function update(
  database: Database,
  clock: Clock,
  id: string,
  set: Partial<Pick<Failback, "state" | "pins_json" | "progress_json" | "cutover_pit_id" | "finished_at">>,
): Promise<void> {
  await database.db
    .updateTable("failbacks")
    .set({ ...set, updated_at: clock.now() })
    .where("id", "=", id)
    .execute();
}

/** Queues a command that makes the agent re-read its mode now instead of at its next settings poll. */
export async function wakeAgent(
  database: Database,
  clock: Clock,
  serverId: string,
  failbackId: string,
): Promise<void> {
  await database.db
    .insertInto("agent_commands")
    .values(newCommand(clock, serverId, "failback", { failbackId }, {}))
    .execute();
}

export async function view(database: Database, clock: Clock, row: Failback): Promise<FailbackView> {
  const names = await database.db
    .selectFrom("servers")
    .select(["id", "name"])
    .where("id", "in", [row.source_server_id, row.target_server_id])
    .execute();
  const name = (id: string) => names.find((n) => n.id === id)?.name ?? id;
  const p = parse<Progress>(row.progress_json);
  const pins = parse<Pins>(row.pins_json);
  const latest = pins.passes.at(-1);
  const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());
  return {
    id: row.id,
    jobId: row.job_id,
    state: row.state,
    source: { id: row.source_server_id, name: name(row.source_server_id) },
    target: { id: row.target_server_id, name: name(row.target_server_id) },
    disks: parse<FailbackDisk[]>(row.disks_json),
    pass: latest?.pass ?? 0,
    passKind: latest?.kind ?? null,
    completedPass: p.completedPass,
    lagSeconds:
      p.inSyncAt === undefined || !ACTIVE.includes(row.state)
        ? null
        : Math.max(0, Math.round((clock.now() - p.inSyncAt) / 1000)),
    backlog: backlogOf(row, pins, p),
    bytesSent: p.bytesSent,
    chunksSent: p.chunksSent,
    chunksCompared: p.chunksCompared,
    cutoverPitId: row.cutover_pit_id,
    verify: p.verify ?? null,
    error: p.error ? { code: p.error.code, message: p.error.message } : null,
    createdAt: iso(row.created_at)!,
    updatedAt: iso(row.updated_at)!,
    finishedAt: iso(row.finished_at),
  };
}

export function parse<T>(text: string): T {
  return JSON.parse(text) as T;
}

export function backlogOf(row: Failback, pins: Pins, p: Progress): FailbackView["backlog"] {
  if (!ACTIVE.includes(row.state)) return null;
  const latest = pins.passes.at(-1);
  if (!latest || p.completedPass >= latest.pass) return { chunks: 0, bytes: 0 };
  if (latest.chunks === undefined) return null;
  const c = p.current?.pass === latest.pass ? p.current : undefined;
  const done = c === undefined ? 0 : latest.kind === "changes" ? c.chunksSent : c.chunksCompared;
  const chunks = Math.max(0, latest.chunks - done);
  const chunkSize = Math.max(0, ...parse<FailbackDisk[]>(row.disks_json).map((d) => d.chunkSize));
  return { chunks, bytes: chunks * chunkSize };
}
