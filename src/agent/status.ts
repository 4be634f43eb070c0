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
