/**
 * What `agent run` reports about itself: written to D/state/status.json
 * about once a second (never while a filesystem is frozen) and read by
 * `agent status`; the same numbers go to the control plane in heartbeats.
 */
import { promises as fs } from "node:fs";
import { writeFileAtomic } from "../base/index.js";

/** DRS state names. */
export type AgentState =
  | "INITIATING"
  | "INITIAL_SYNC"
  | "CONTINUOUS"
  | "BACKLOG"
  | "RESCAN"
  | "STALLED"
  | "DISCONNECTED"
  | "STOPPED"
  /** Not replicating: the server's data lives on a recovered instance (failback.ts at the control plane). */
  | "FENCED"
  /** Receiving a failback onto its own disks. */
  | "RECEIVING";

export interface DiskStatus {
  index: number;
  path: string;
  sizeBytes: number;
  /** MISSING: configured, but its device is gone (disk-changes.ts); not replicated until it is back. */
  state: "INITIAL_SYNC" | "RESCAN" | "CONTINUOUS" | "REMOVED" | "MISSING";
  /** Of the current initial sync or rescan pass; absent otherwise. */
  progress?: { doneBytes: number; totalBytes: number; bytesPerSecond: number; etaSeconds: number | null };
  dirtyBytes: number;
  /** A MISSING disk's: since when (ms since the epoch) and why; it is retired after the grace period. */
  missingSince?: number;
  missingReason?: string;
}

export interface AgentStatus {
  state: AgentState;
  tracker: "trace" | "scan";
  /** Age of the oldest write not yet acknowledged by the replicator (0 when none). */
  lagSeconds: number;
  /** Bytes dirty or in flight. */
  backlogBytes: number;
  disks: DiskStatus[];
  serverId: string;
  pid: number;
  /** When this status was written (ms since the epoch). */
  updatedAt: number;
  connected: boolean;
  lastPit?: { pitId: string; takenAt: number; consistency: string };
  /** Totals since the agent started. */
  counters: {
    bytesRead: number;
    bytesSent: number;
    blocksSent: number;
    rescans: number;
    traceLosses: number;
  };
  lastError?: { code: string; message: string; at: number };
}

/** The earlier of two times, either of which may be null (none). */
export function earliest(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.min(a, b);
}

/** What diskStatus reads of a disk being replicated (DiskRun). */
export interface DiskProgress {
  cfg: { index: number; path: string };
  size: number;
  fresh: { dirtyBytes(): number; dirtySince: number | null };
  settled: { dirtyBytes(): number; dirtySince: number | null };
  owed: "initial" | "rescan" | undefined;
  pass: { kind: "initial" | "rescan"; done: number; started: number } | undefined;
  sentPass?: { kind: "initial" | "rescan"; seq: number } | undefined;
}

/**
 * One disk's line of the status at `now`, the bytes it still has to ship
 * (dirty, and the rest of a running pass), and when its oldest dirty write
 * happened (null when none). A pass that is all sent keeps its state
 * (INITIAL_SYNC, RESCAN) until the replicator has acknowledged its last
 * frame (`lastAcked`, the highest sequence number acknowledged; all when not given): until then
 * the replica may hold none of it.
 */
export function diskStatus(
  d: DiskProgress,
  now: number,
  lastAcked = Infinity,
): { status: DiskStatus; backlogBytes: number; oldest: number | null } {
  const dirtyBytes = d.fresh.dirtyBytes() + d.settled.dirtyBytes();
  let backlogBytes = dirtyBytes;
  const oldest = earliest(d.fresh.dirtySince, d.settled.dirtySince);
  // A pass that is owed counts as running: the disk is not continuous until it is done.
  const unacked = d.sentPass && d.sentPass.seq > lastAcked ? d.sentPass.kind : undefined;
  const kind = d.pass?.kind ?? d.owed ?? unacked;
  const status: DiskStatus = {
    index: d.cfg.index,
    path: d.cfg.path,
    sizeBytes: d.size,
    state: kind === "initial" ? "INITIAL_SYNC" : kind === "rescan" ? "RESCAN" : "CONTINUOUS",
    dirtyBytes,
  };
  if (d.pass) {
    const secs = Math.max(0.001, (now - d.pass.started) / 1000);
    const rate = d.pass.done / secs;
    backlogBytes += d.size - d.pass.done;
    status.progress = {
      doneBytes: d.pass.done,
      totalBytes: d.size,
      bytesPerSecond: Math.round(rate),
      etaSeconds: rate > 0 ? Math.round((d.size - d.pass.done) / rate) : null,
    };
  }
  return { status, backlogBytes, oldest };
}

/**
 * The agent's state from its disks and its backlog: INITIATING until the
 * replicator has welcomed it, then a pass over any disk wins (INITIAL_SYNC
 * before RESCAN), then STALLED when a backlog has not moved for
 * `stallSeconds`, BACKLOG when the lag passes its threshold, else CONTINUOUS.
 */
export function agentState(o: {
  welcomed: boolean;
  disks: DiskStatus[];
  backlogBytes: number;
  lagSeconds: number;
  /** Since the replicator last acknowledged something. */
  msSinceProgress: number;
  settings: { stallSeconds: number; lagThresholdSeconds: number };
}): AgentState {
  if (!o.welcomed) return "INITIATING";
  if (o.disks.some((d) => d.state === "INITIAL_SYNC")) return "INITIAL_SYNC";
  if (o.disks.some((d) => d.state === "RESCAN")) return "RESCAN";
  if (o.backlogBytes > 0 && o.msSinceProgress > o.settings.stallSeconds * 1000) return "STALLED";
  if (o.lagSeconds > o.settings.lagThresholdSeconds) return "BACKLOG";
  return "CONTINUOUS";
}

/** The status file an agent writes as it starts, before its engine reports anything. */
export function startingStatus(serverId: string, now: number): AgentStatus {
  return {
    state: "INITIATING",
    tracker: "scan",
    lagSeconds: 0,
    backlogBytes: 0,
    disks: [],
    serverId,
    pid: process.pid,
    updatedAt: now,
    connected: false,
    counters: { bytesRead: 0, bytesSent: 0, blocksSent: 0, rescans: 0, traceLosses: 0 },
  };
}

export async function writeAgentStatus(file: string, status: AgentStatus): Promise<void> {
  // Not fsynced: it is rewritten every second and a lost one costs nothing.
  await writeFileAtomic(file, `${JSON.stringify(status)}\n`, { mode: 0o600, durable: false });
}

/** The last status written, or null when there is none. */
export async function readAgentStatus(file: string): Promise<AgentStatus | null> {
  try {
    return JSON.parse(await fs.readFile(file, "utf8")) as AgentStatus;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}
