import {
  type Head,
  type Repository,
  ZERO_ID,
  diffBlockMaps,
  entryId,
  isZeroId,
  readEntries,
  readHead,
  readPit,
} from "../store/index.js";
import { type BatchChunk, encodeChunkBatch } from "../wire/index.js";
import { type Database, type Failback, type FailbackState, appendEvent } from "./db/index.js";
import { diskGenerations, renewGenerations, setFence } from "./generations.js";
import { httpError } from "./http-error.js";
import { logJobStep } from "./jobs.js";
import {
  type FailbackDeps,
  type FailbackDisk,
  type PassKind,
  type PassCounters,
  type Pin,
  type PinDisk,
  type Pins,
  type Progress,
  ACTIVE,
  ownFailback,
  parse,
  serverById,
  update,
  wakeAgent,
} from "./failback-rows.js";

/** The agent side of a failback (see failback.ts): passes, chunk batches, readiness. */

/** Chunks a changes batch carries at most, and bytes. */
const BATCH_CHUNKS = 128;
const BATCH_BYTES = 8 * 1024 * 1024;

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
