import type { Clock } from "../base/index.js";
import {
  type BlockMapRef,
  type Head,
  type Repository,
  ZERO_ID,
  diffBlockMaps,
  entryId,
  isZeroId,
  listPits,
  readEntries,
  readHead,
  readPit,
} from "../store/index.js";
import { type BatchChunk, encodeChunkBatch } from "../wire/index.js";
import { newCommand } from "./command-rows.js";
import { findServer, requestPit } from "./commands.js";
import { type Database, type Failback, type FailbackState, type Server, appendEvent } from "./db/index.js";
import { diskGenerations, renewGenerations, setFence } from "./generations.js";
import { httpError } from "./http-error.js";
import { createJob, logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";

/**
 * Failback: after a recovery, the recovered instance's agent replicates as
 * any server does (its data lands in the repository, deduplicated against
 * the PITs it was recovered from), and the original server's agent, in
 * receive mode, makes its own disks equal to that replica, fetching only the
 * chunks that differ. It works in passes, each against a pinned state of the
 * source (its replica's head, or at cut-over its final PIT):
 *
 *  - full: the target hashes its disk range by range and gets back the
 *    chunks whose hash differs (the first pass: the original disks still hold
 *    the pre-disaster data, so little moves);
 *  - changes: the chunks that differ between the last pass's pin and this
 *    one, found by walking the two block maps (equal subtrees are skipped),
 *    so following the source costs what changed;
 *  - verify: a full pass at cut-over against the final PIT; it must find
 *    nothing to send.
 *
 * The target persists its cursor, so a broken link or a restart resumes the
 * pass where it was. `lifeboat failback cutover` asks the source for a
 * filesystem-consistent PIT (freeze, ship, thaw); once the target synced to
 * it and a verify pass found every block equal, the failback is ready: the
 * original server's disks get new generations, its fence is lifted and it
 * replicates again (sending only chunk references, since the repository holds
 * every chunk it has), while the recovered instance is fenced as failed-back.
 */

export type PassKind = "full" | "changes" | "verify";

export interface FailbackDisk {
  /** Disk index on the source (the recovered instance). */
  source: number;
  /** Disk index on the target (the original server). */
  target: number;
  sizeBytes: number;
  chunkSize: number;
}

interface PinDisk extends BlockMapRef {
  index: number;
  sizeBytes: number;
}

interface Pin {
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

interface Pins {
  passes: Pin[];
  cutover?: { commandId: string; jobId: string; requestedAt: number };
}

interface PassCounters {
  pass: number;
  kind: PassKind;
  chunksCompared: number;
  chunksSent: number;
  bytesSent: number;
}

interface Progress {
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

const ACTIVE: readonly FailbackState[] = ["syncing", "cutover"];
/** Chunks a changes batch carries at most, and bytes. */
const BATCH_CHUNKS = 128;
const BATCH_BYTES = 8 * 1024 * 1024;

// ---- operator side ----------------------------------------------------------

/**
 * Pairs a recovered instance's server (`source`: a server, or a recovery job
 * whose recovered instance registered with a token made for it) with the
 * original server (`to`; with a recovery job, its server unless given).
 * Refuses a pairing whose disks do not fit, a source with nothing
 * replicated yet, and a server already in a failback.
 */
export async function startFailback(
  deps: FailbackDeps,
  input: { source: string; to?: string | undefined; createdBy: string },
): Promise<FailbackView> {
  const { database, clock } = deps;
  const { source, target } = await pairOf(database, input.source, input.to);
  if (source.id === target.id)
    throw httpError(
      400,
      "FAILBACK_SAME_SERVER",
      `server ${source.name} cannot fail back onto itself`,
      "name the recovered instance's server as the source and the original server with --to",
    );
  for (const s of [source, target])
    if (s.decommissioned_at !== null)
      throw httpError(409, "SERVER_DECOMMISSIONED", `server ${s.name} was decommissioned`, "");
  const busy = await database.db
    .selectFrom("failbacks")
    .select(["id"])
    .where("state", "in", [...ACTIVE])
    .where((eb) =>
      eb.or([
        eb("source_server_id", "in", [source.id, target.id]),
        eb("target_server_id", "in", [source.id, target.id]),
      ]),
    )
    .executeTakeFirst();
  if (busy)
    throw httpError(
      409,
      "FAILBACK_ACTIVE",
      `failback ${busy.id} already involves ${source.name} or ${target.name}`,
      "follow it with `lifeboat failback show`, or cancel it with `lifeboat failback cancel`",
    );
  const repo = await deps.repo();
  const sourceHead = await readHead(repo, source.name);
  if (!sourceHead || sourceHead.disks.length === 0)
    throw httpError(
      409,
      "FAILBACK_SOURCE_EMPTY",
      `server ${source.name} has replicated nothing yet`,
      "install the agent on the recovered instance and wait until `lifeboat servers show` says CONTINUOUS",
    );
  const targetDisks = await knownDisks(repo, database, target);
  const disks: FailbackDisk[] = [];
  for (const d of sourceHead.disks) {
    const t = targetDisks.find((x) => x.index === d.index);
    if (!t)
      throw httpError(
        409,
        "FAILBACK_DISK_MISSING",
        `server ${target.name} has no disk ${d.index} for disk ${d.index} of ${source.name}`,
        "fail back onto a server with as many disks, or add the disk to its agent's configuration",
      );
    if (t.sizeBytes < d.sizeBytes)
      throw httpError(
        409,
        "FAILBACK_DISK_TOO_SMALL",
        `disk ${d.index} of ${target.name} has ${t.sizeBytes} bytes; disk ${d.index} of ${source.name} needs ${d.sizeBytes}`,
        "grow the original disk first, or fail back onto another server",
      );
    disks.push({ source: d.index, target: t.index, sizeBytes: d.sizeBytes, chunkSize: d.chunkSize });
  }
  const id = newId("fb");
  const job = await createJob(database, clock, {
    type: "failback",
    serverIds: [target.id, source.id],
    params: { failbackId: id, source: source.name, target: target.name },
    createdBy: input.createdBy,
  });
  const now = clock.now();
  await database.db
    .insertInto("failbacks")
    .values({
      id,
      job_id: job.id,
      source_server_id: source.id,
      target_server_id: target.id,
      state: "syncing",
      disks_json: JSON.stringify(disks),
      pins_json: JSON.stringify({ passes: [] } satisfies Pins),
      progress_json: JSON.stringify({
        completedPass: 0,
        bytesSent: 0,
        chunksSent: 0,
        chunksCompared: 0,
      } satisfies Progress),
      cutover_pit_id: null,
      error_code: null,
      error_message: null,
      created_at: now,
      updated_at: now,
      finished_at: null,
    })
    .execute();
  await setFence(database, target.id, "receiving");
  await wakeAgent(database, clock, target.id, id);
  await logJobStep(database, clock, job.id, {
    message: `failback ${id}: ${source.name} → ${target.name}, ${disks.length} disk(s) (${disks
      .map((d) => `${d.source}→${d.target} ${d.sizeBytes} bytes`)
      .join(", ")}); waiting for the agent of ${target.name} to switch to receive mode`,
    state: "running",
  });
  await appendEvent(
    database,
    { type: "failback.started", serverId: target.id, payload: { failbackId: id, source: source.name } },
    clock,
  );
  return getFailback(database, clock, id);
}

/**
 * Asks the source for a filesystem-consistent PIT (freeze, ship, thaw); the
 * target syncs to it, verifies every block against it, and the failback is
 * then ready (state "ready").
 */
export async function requestCutover(
  deps: FailbackDeps,
  key: string,
  createdBy: string,
): Promise<FailbackView> {
  const { database, clock } = deps;
  const row = await failbackByKey(database, key);
  if (row.state !== "syncing" && row.state !== "cutover")
    throw httpError(
      409,
      "FAILBACK_NOT_ACTIVE",
      `failback ${row.id} is ${row.state}`,
      "start a new failback with `lifeboat failback start`",
    );
  const progress = parse<Progress>(row.progress_json);
  if (progress.completedPass === 0)
    throw httpError(
      409,
      "FAILBACK_NOT_SYNCED",
      `failback ${row.id} has not finished its first pass yet`,
      "wait until `lifeboat failback show` reports pass 1 complete, then cut over",
    );
  const source = await serverById(database, row.source_server_id);
  const { command, jobId } = await requestPit(database, clock, source, {
    consistency: "filesystem",
    createdBy,
  });
  const pins = parse<Pins>(row.pins_json);
  pins.cutover = { commandId: command.id, jobId, requestedAt: clock.now() };
  await update(database, clock, row.id, { state: "cutover", pins_json: JSON.stringify(pins) });
  await logJobStep(database, clock, row.job_id, {
    message: `cut-over requested: a filesystem-consistent PIT of ${source.name} (job ${jobId}); the target syncs to it and verifies every block`,
  });
  return getFailback(database, clock, row.id);
}

/** Stops a failback: the target's agent leaves receive mode and stays fenced until an operator decides. */
export async function cancelFailback(deps: FailbackDeps, key: string): Promise<FailbackView> {
  const { database, clock } = deps;
  const row = await failbackByKey(database, key);
  if (!ACTIVE.includes(row.state))
    throw httpError(409, "FAILBACK_NOT_ACTIVE", `failback ${row.id} is ${row.state}`, "");
  await update(database, clock, row.id, { state: "cancelled", finished_at: clock.now() });
  // The original server's data is now part old, part new: it stays fenced (as after the recovery).
  await setFence(database, row.target_server_id, "failed-over");
  await wakeAgent(database, clock, row.target_server_id, row.id);
  await logJobStep(database, clock, row.job_id, {
    level: "warn",
    message:
      "failback cancelled: the original server's disks are partly synced and stay fenced; start a failback again to finish it",
    state: "terminated",
  });
  return getFailback(database, clock, row.id);
}

export async function listFailbacks(database: Database, clock: Clock): Promise<FailbackView[]> {
  const rows = await database.db.selectFrom("failbacks").selectAll().orderBy("created_at", "desc").execute();
  return Promise.all(rows.map((r) => view(database, clock, r)));
}

export async function getFailback(database: Database, clock: Clock, key: string): Promise<FailbackView> {
  return view(database, clock, await failbackByKey(database, key));
}

// ---- agent side -------------------------------------------------------------

export type AgentMode =
  | { mode: "replicate"; generations: { index: number; generation: string }[] }
  | { mode: "receive"; failbackId: string }
  | { mode: "fenced"; reason: string };

/** What the agent of `serverId` should do now: replicate, receive a failback, or stay fenced. */
export async function agentMode(database: Database, serverId: string): Promise<AgentMode> {
  const fb = await database.db
    .selectFrom("failbacks")
    .select(["id"])
    .where("target_server_id", "=", serverId)
    .where("state", "in", [...ACTIVE])
    .executeTakeFirst();
  if (fb) return { mode: "receive", failbackId: fb.id };
  const s = await database.db
    .selectFrom("servers")
    .select("fenced")
    .where("id", "=", serverId)
    .executeTakeFirst();
  if (s?.fenced) return { mode: "fenced", reason: s.fenced };
  return { mode: "replicate", generations: await diskGenerations(database, serverId) };
}

export interface PassView {
  failbackId: string;
  /** The target leaves receive mode: the failback ended (done: replicate with these generations, resync the stream). */
  end?: { state: FailbackState; generations?: { index: number; generation: string }[] };
  /** Nothing new on the source: ask again after this long. */
  idleMs?: number;
  pass?: number;
  kind?: PassKind;
  final?: boolean;
  disks?: { source: number; target: number; sizeBytes: number; chunkSize: number; chunkCount: number }[];
}

/**
 * The target's loop asks for its pass: the one it has not completed yet, or
 * (having reported `completed`) the next one. Decides when the cut-over PIT
 * is synced and verified, and finishes the failback then.
 */
export async function nextPass(
  deps: FailbackDeps,
  failbackId: string,
  serverId: string,
  completed: number | undefined,
): Promise<PassView> {
  const { database, clock } = deps;
  let row = await ownFailback(database, failbackId, serverId);
  const disks = parse<FailbackDisk[]>(row.disks_json);
  if (!ACTIVE.includes(row.state)) return ended(database, row);
  const pins = parse<Pins>(row.pins_json);
  const progress = parse<Progress>(row.progress_json);
  const latest = pins.passes.at(-1);
  if (completed !== undefined && latest && completed === latest.pass && progress.completedPass < completed)
    await passCompleted(deps, row, latest, progress);
  row = await ownFailback(database, failbackId, serverId);
  if (!ACTIVE.includes(row.state)) return ended(database, row);
  const p = parse<Progress>(row.progress_json);
  if (latest && p.completedPass < latest.pass && p.stalePass !== latest.pass)
    return passView(row, latest, disks);
  const next = await nextPin(deps, row, pins, p);
  if (!next) {
    await update(database, clock, row.id, { progress_json: JSON.stringify({ ...p, inSyncAt: clock.now() }) });
    return { failbackId, idleMs: 1000 };
  }
  next.chunks = await passChunks(await deps.repo(), pins, next);
  pins.passes = [...pins.passes.slice(-1), next];
  const current: PassCounters = {
    pass: next.pass,
    kind: next.kind,
    chunksCompared: 0,
    chunksSent: 0,
    bytesSent: 0,
  };
  await update(database, clock, row.id, {
    pins_json: JSON.stringify(pins),
    progress_json: JSON.stringify({ ...p, current }),
  });
  return passView(row, next, disks);
}

/**
 * A full or verify pass: `hashes` are the SHA-256 of the target's chunks
 * `first`… of source disk `disk` (the zero id for an all-zero chunk); the
 * answer carries the pinned source's bytes of each chunk that differs.
 */
export async function compareChunks(
  deps: FailbackDeps,
  failbackId: string,
  serverId: string,
  req: { pass: number; disk: number; first: number; hashes: Buffer },
): Promise<Buffer> {
  const row = await ownFailback(deps.database, failbackId, serverId);
  const { pin, disk } = pinDisk(row, req.pass, req.disk);
  if (req.hashes.length % 32 !== 0)
    throw httpError(400, "FAILBACK_BAD_REQUEST", "hashes must be whole 32-byte SHA-256 values", "");
  const n = req.hashes.length / 32;
  if (req.first < 0 || req.first + n > disk.chunkCount)
    throw httpError(400, "FAILBACK_BAD_REQUEST", `chunks ${req.first}+${n} are outside disk ${req.disk}`, "");
  const repo = await deps.repo();
  const entries = await readEntries(repo, disk, req.first, n);
  const out: BatchChunk[] = [];
  for (let i = 0; i < n; i++) {
    const theirs = req.hashes.subarray(i * 32, i * 32 + 32);
    const e = entries[i]!;
    const ours = isZeroId(e) ? ZERO_ID : entryId(e);
    if (ours.equals(theirs)) continue;
    out.push(
      isZeroId(e)
        ? { index: req.first + i, data: Buffer.alloc(0), zero: true }
        : { index: req.first + i, data: await repo.readChunk(e) },
    );
  }
  const body = encodeChunkBatch(
    { pass: pin.pass, next: req.first + n < disk.chunkCount ? req.first + n : null },
    out,
  );
  await count(deps, row, pin, { compared: n, sent: out.length, bytes: body.length });
  return body;
}

/** A changes pass: the chunks that differ between the previous pass's pin and this one, from chunk `from`. */
export async function changedChunks(
  deps: FailbackDeps,
  failbackId: string,
  serverId: string,
  req: { pass: number; disk: number; from: number },
): Promise<Buffer> {
  const row = await ownFailback(deps.database, failbackId, serverId);
  const { pin, disk } = pinDisk(row, req.pass, req.disk);
  const pins = parse<Pins>(row.pins_json);
  const base = pins.passes.find((p) => p.pass === pin.fromPass)?.disks.find((d) => d.index === req.disk);
  const repo = await deps.repo();
  const out: BatchChunk[] = [];
  let bytes = 0;
  let next: number | null = null;
  try {
    if (!base) throw new RangeError("the previous pin is gone");
    await diffBlockMaps(repo, base, disk, req.from, async (index, entry) => {
      if (out.length >= BATCH_CHUNKS || bytes >= BATCH_BYTES) {
        next = index;
        return false;
      }
      const data = isZeroId(entry) ? Buffer.alloc(0) : await repo.readChunk(entry);
      bytes += data.length;
      out.push({ index, data, zero: isZeroId(entry) });
      return true;
    });
  } catch (err) {
    // A pin whose pages were collected (or sizes that changed): the next pass compares everything.
    const p = parse<Progress>(row.progress_json);
    await update(deps.database, deps.clock, row.id, {
      progress_json: JSON.stringify({ ...p, stalePass: pin.pass }),
    });
    throw httpError(
      409,
      "FAILBACK_PASS_STALE",
      `pass ${pin.pass} can no longer be followed (${String(err)})`,
      "the agent asks for a new pass, which compares every chunk",
    );
  }
  const body = encodeChunkBatch({ pass: pin.pass, next }, out);
  await count(deps, row, pin, { compared: 0, sent: out.length, bytes: body.length });
  return body;
}

/** The target reports a problem it cannot get past (a mounted disk): shown in the job and `failback show`. */
export async function reportProblem(
  deps: FailbackDeps,
  failbackId: string,
  serverId: string,
  problem: { code: string; message: string },
): Promise<void> {
  const row = await ownFailback(deps.database, failbackId, serverId);
  const p = parse<Progress>(row.progress_json);
  const same = p.error?.code === problem.code && p.error.message === problem.message;
  await update(deps.database, deps.clock, row.id, {
    progress_json: JSON.stringify({ ...p, error: { ...problem, at: deps.clock.now() } }),
  });
  if (!same)
    await logJobStep(deps.database, deps.clock, row.job_id, {
      level: "error",
      message: `the target refuses: ${problem.code}: ${problem.message}`,
    });
}

// ---- internals --------------------------------------------------------------

async function nextPin(deps: FailbackDeps, row: Failback, pins: Pins, p: Progress): Promise<Pin | undefined> {
  const { database, clock } = deps;
  const repo = await deps.repo();
  const latest = pins.passes.at(-1);
  const pass = (latest?.pass ?? 0) + 1;
  const stale = latest !== undefined && p.stalePass === latest.pass;
  const disks = parse<FailbackDisk[]>(row.disks_json);
  // Cut-over: once the PIT exists, sync to it, then verify against it until a pass finds nothing.
  if (row.state === "cutover" && pins.cutover) {
    if (latest?.final && !stale) {
      if (latest.kind === "verify" && p.verify?.pass === latest.pass && p.verify.mismatched === 0)
        return undefined;
      return { ...latest, pass, kind: "verify", final: true, takenAt: latest.takenAt };
    }
    const pit = await cutoverPit(deps, row, pins);
    if (pit) {
      const pinDisks = disks.map((d) => {
        const pd = pit.disks.find((x) => x.index === d.source)!;
        return {
          index: d.source,
          root: pd.root,
          depth: pd.depth,
          chunkCount: pd.chunkCount,
          sizeBytes: pd.sizeBytes,
        };
      });
      await update(database, clock, row.id, { cutover_pit_id: pit.id });
      return {
        pass,
        kind: latest && !stale ? "changes" : "full",
        ...(latest && !stale ? { fromPass: latest.pass } : {}),
        takenAt: pit.timeMs,
        pitId: pit.id,
        final: true,
        disks: pinDisks,
      };
    }
  }
  const head = await readHead(repo, (await serverById(database, row.source_server_id)).name);
  if (!head) return undefined;
  const pinDisks = headDisks(head, disks);
  if (latest && !stale && sameRoots(latest.disks, pinDisks)) return undefined;
  return {
    pass,
    kind: latest && !stale ? "changes" : "full",
    ...(latest && !stale ? { fromPass: latest.pass } : {}),
    takenAt: head.timeMs,
    final: false,
    disks: pinDisks,
  };
}

/** The cut-over PIT once its command is done; a failed command puts the failback back to syncing. */
async function cutoverPit(deps: FailbackDeps, row: Failback, pins: Pins) {
  const { database, clock } = deps;
  const c = await database.db
    .selectFrom("agent_commands")
    .select(["state", "result_json", "error_code", "error_message"])
    .where("id", "=", pins.cutover!.commandId)
    .executeTakeFirst();
  if (!c || c.state === "queued" || c.state === "delivered" || c.state === "frozen") return undefined;
  if (c.state !== "done") {
    delete pins.cutover;
    await update(database, clock, row.id, { state: "syncing", pins_json: JSON.stringify(pins) });
    await logJobStep(database, clock, row.job_id, {
      level: "error",
      message: `the cut-over PIT failed (${c.error_code ?? c.state}: ${c.error_message ?? ""}); still syncing — run \`lifeboat failback cutover\` again`,
    });
    return undefined;
  }
  const result = parse<{ pitId?: string }>(c.result_json ?? "{}");
  return result.pitId ? readPit(await deps.repo(), result.pitId) : undefined;
}

async function passCompleted(deps: FailbackDeps, row: Failback, pin: Pin, p: Progress): Promise<void> {
  const { database, clock } = deps;
  const c = p.current?.pass === pin.pass ? p.current : undefined;
  const done: Progress = { ...p, completedPass: pin.pass };
  delete done.error;
  if (pin.kind === "verify")
    done.verify = {
      pass: pin.pass,
      chunks: c?.chunksCompared ?? 0,
      mismatched: c?.chunksSent ?? 0,
    };
  else if (!pin.final) done.inSyncAt = pin.takenAt;
  await update(database, clock, row.id, { progress_json: JSON.stringify(done) });
  const what =
    pin.kind === "full"
      ? `compared ${c?.chunksCompared ?? 0} chunks`
      : pin.kind === "changes"
        ? `followed the changes since pass ${pin.fromPass}`
        : `verified ${c?.chunksCompared ?? 0} chunks against PIT ${pin.pitId}`;
  const sent = `${c?.chunksSent ?? 0} chunk(s) differed, ${c?.bytesSent ?? 0} bytes sent (${done.bytesSent} in all)`;
  if (pin.kind !== "changes" || (c?.chunksSent ?? 0) > 0 || pin.final)
    await logJobStep(database, clock, row.job_id, {
      message: `pass ${pin.pass} (${pin.kind}${pin.final ? ", cut-over PIT" : ""}): ${what}; ${sent}`,
    });
  if (pin.kind === "verify" && (c?.chunksSent ?? 0) === 0) await finishReady(deps, row, pin, done);
}

async function finishReady(deps: FailbackDeps, row: Failback, pin: Pin, p: Progress): Promise<void> {
  const { database, clock } = deps;
  const target = await serverById(database, row.target_server_id);
  const source = await serverById(database, row.source_server_id);
  const disks = parse<FailbackDisk[]>(row.disks_json);
  await update(database, clock, row.id, { state: "ready", finished_at: clock.now() });
  await renewGenerations(
    database,
    clock,
    target.id,
    disks.map((d) => d.target),
    `failback ${row.id}`,
  );
  await setFence(database, target.id, null);
  await setFence(database, source.id, "failed-back");
  await wakeAgent(database, clock, target.id, row.id);
  await appendEvent(
    database,
    { type: "failback.ready", serverId: target.id, payload: { failbackId: row.id, pitId: pin.pitId } },
    clock,
  );
  await logJobStep(database, clock, row.job_id, {
    message: `ready to boot: the disks of ${target.name} equal PIT ${pin.pitId} of ${source.name} block for block (${p.verify?.chunks ?? 0} chunks verified); ${p.bytesSent} bytes sent in all. ${target.name} replicates again in its own direction; shut ${source.name} down`,
    state: "succeeded",
    result: { failbackId: row.id, pitId: pin.pitId, bytesSent: p.bytesSent, chunksSent: p.chunksSent },
  });
}

async function ended(database: Database, row: Failback): Promise<PassView> {
  return {
    failbackId: row.id,
    end: {
      state: row.state,
      ...(row.state === "ready"
        ? { generations: await diskGenerations(database, row.target_server_id) }
        : {}),
    },
  };
}

/** How many chunks a new pass goes through (undefined when a changes pass's diff cannot be read now). */
async function passChunks(repo: Repository, pins: Pins, pin: Pin): Promise<number | undefined> {
  if (pin.kind !== "changes") return pin.disks.reduce((n, d) => n + d.chunkCount, 0);
  const from = pins.passes.find((p) => p.pass === pin.fromPass);
  let n = 0;
  try {
    for (const d of pin.disks) {
      const base = from?.disks.find((x) => x.index === d.index);
      if (!base) return undefined;
      await diffBlockMaps(repo, base, d, 0, () => {
        n++;
        return true;
      });
    }
  } catch {
    return undefined; // the pass itself finds out and says so (FAILBACK_PASS_STALE)
  }
  return n;
}

function backlogOf(row: Failback, pins: Pins, p: Progress): FailbackView["backlog"] {
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

function passView(row: Failback, pin: Pin, disks: FailbackDisk[]): PassView {
  return {
    failbackId: row.id,
    pass: pin.pass,
    kind: pin.kind,
    final: pin.final,
    disks: disks.map((d) => ({
      ...d,
      chunkCount: pin.disks.find((x) => x.index === d.source)?.chunkCount ?? 0,
    })),
  };
}

async function count(
  deps: FailbackDeps,
  row: Failback,
  pin: Pin,
  n: { compared: number; sent: number; bytes: number },
): Promise<void> {
  const p = parse<Progress>(row.progress_json);
  const c: PassCounters =
    p.current?.pass === pin.pass
      ? p.current
      : { pass: pin.pass, kind: pin.kind, chunksCompared: 0, chunksSent: 0, bytesSent: 0 };
  c.chunksCompared += n.compared;
  c.chunksSent += n.sent;
  c.bytesSent += n.bytes;
  const next: Progress = {
    ...p,
    current: c,
    chunksCompared: p.chunksCompared + n.compared,
    chunksSent: p.chunksSent + n.sent,
    bytesSent: p.bytesSent + n.bytes,
  };
  await update(deps.database, deps.clock, row.id, { progress_json: JSON.stringify(next) });
}

function pinDisk(row: Failback, pass: number, disk: number): { pin: Pin; disk: PinDisk } {
  // Only the latest pass is served: an older one's chunks may no longer be what the target needs.
  const pin = parse<Pins>(row.pins_json).passes.at(-1);
  const d = pin?.pass === pass ? pin.disks.find((x) => x.index === disk) : undefined;
  if (!pin || !d)
    throw httpError(
      409,
      "FAILBACK_PASS_STALE",
      `pass ${pass} of failback ${row.id} is not the current one`,
      "the agent asks for the current pass and continues there",
    );
  return { pin, disk: d };
}

function headDisks(head: Head, disks: FailbackDisk[]): PinDisk[] {
  return disks.map((d) => {
    const h = head.disks.find((x) => x.index === d.source);
    if (!h)
      throw httpError(409, "FAILBACK_DISK_MISSING", `the replica of the source has no disk ${d.source}`, "");
    return {
      index: d.source,
      root: h.root,
      depth: h.depth,
      chunkCount: h.chunkCount,
      sizeBytes: h.sizeBytes,
    };
  });
}

function sameRoots(a: PinDisk[], b: PinDisk[]): boolean {
  return (
    a.length === b.length && a.every((d, i) => d.root === b[i]!.root && d.chunkCount === b[i]!.chunkCount)
  );
}

async function knownDisks(
  repo: Repository,
  database: Database,
  server: Server,
): Promise<{ index: number; sizeBytes: number }[]> {
  const head = await readHead(repo, server.name);
  if (head) return head.disks.map((d) => ({ index: d.index, sizeBytes: d.sizeBytes }));
  const pit = await database.db
    .selectFrom("pits")
    .select("disks_json")
    .where("server_id", "=", server.id)
    .orderBy("time_ms", "desc")
    .limit(1)
    .executeTakeFirst();
  if (pit) return parse<{ index: number; sizeBytes: number }[]>(pit.disks_json);
  const latest = (await listPits(repo, { server: server.name })).at(-1);
  if (latest) return latest.disks.map((d) => ({ index: d.index, sizeBytes: d.sizeBytes }));
  throw httpError(
    409,
    "FAILBACK_TARGET_UNKNOWN",
    `nothing is known of the disks of ${server.name}`,
    "fail back onto the server the recovery was made from",
  );
}

async function pairOf(
  database: Database,
  sourceKey: string,
  toKey: string | undefined,
): Promise<{ source: Server; target: Server }> {
  const job = await database.db
    .selectFrom("jobs")
    .select(["id", "type", "server_ids_json"])
    .where("id", "=", sourceKey)
    .executeTakeFirst();
  let source: Server | undefined;
  let targetKey = toKey;
  if (job) {
    if (job.type !== "recovery")
      throw httpError(
        400,
        "FAILBACK_NOT_RECOVERY",
        `job ${job.id} is a ${job.type}, not a recovery`,
        "give a recovery job or the recovered instance's server",
      );
    source = await database.db
      .selectFrom("servers")
      .selectAll()
      .where("recovery_job_id", "=", job.id)
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (!source)
      throw httpError(
        409,
        "FAILBACK_NO_RECOVERED_AGENT",
        `no agent of job ${job.id}'s recovered instance has registered`,
        "install the agent on the recovered instance with a token from `lifeboat token create --recovery-of JOB`",
      );
    targetKey ??= (JSON.parse(job.server_ids_json) as string[])[0];
  } else source = await findServer(database, sourceKey);
  if (!source)
    throw httpError(
      404,
      "SERVER_NOT_FOUND",
      `no server or recovery job ${sourceKey}`,
      "list servers with `lifeboat servers list`",
    );
  if (targetKey === undefined)
    throw httpError(400, "FAILBACK_TARGET_REQUIRED", "name the original server with --to", "");
  const target = await findServer(database, targetKey);
  if (!target)
    throw httpError(
      404,
      "SERVER_NOT_FOUND",
      `no server ${targetKey}`,
      "list servers with `lifeboat servers list`",
    );
  return { source, target };
}

async function failbackByKey(database: Database, key: string): Promise<Failback> {
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

async function ownFailback(database: Database, id: string, serverId: string): Promise<Failback> {
  const row = await database.db.selectFrom("failbacks").selectAll().where("id", "=", id).executeTakeFirst();
  if (!row || row.target_server_id !== serverId)
    throw httpError(404, "FAILBACK_NOT_FOUND", `no failback ${id} for this server`, "");
  return row;
}

async function serverById(database: Database, id: string): Promise<Server> {
  return database.db.selectFrom("servers").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
}

async function update(
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
async function wakeAgent(
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

async function view(database: Database, clock: Clock, row: Failback): Promise<FailbackView> {
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

function parse<T>(text: string): T {
  return JSON.parse(text) as T;
}
