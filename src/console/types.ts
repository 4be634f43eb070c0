/** What the control plane's API answers, as far as the console reads it. */
export type Role = "admin" | "operator" | "viewer";

export interface Session {
  keyId: string;
  name: string;
  role: Role;
  expiresAt: string;
}

export interface ServerRow {
  id: string;
  name: string;
  state: string;
  online: boolean;
  lagSeconds: number | null;
  backlogBytes: number | null;
  lastSeenAt: string | null;
  lastPit: { id: string; time: string; ageSeconds: number; consistency: string } | null;
  rpo: { targetSeconds: number; met: boolean };
  readiness: { profile: string; ready: boolean; verdict: string; problems: number } | null;
  replicator: { id: string; name: string } | null;
  group: string | null;
}

export interface Problem {
  code: string;
  severity: "error" | "warning";
  message: string;
  remedy: string;
}

export interface Readiness {
  profile: string;
  ready: boolean;
  verdict: string;
  problems: Problem[];
  checkedAt: string;
}

export interface DiskInfo {
  index: number;
  path: string;
  sizeBytes: number;
  state: string;
  progress?: { doneBytes: number; totalBytes: number; bytesPerSecond: number; etaSeconds: number | null };
}

export interface Server {
  id: string;
  name: string;
  hostname: string | null;
  state: string;
  online: boolean;
  lagSeconds: number | null;
  backlogBytes: number | null;
  lastSeenAt: string | null;
  registeredAt: string;
  replicatorId: string | null;
  group: string | null;
  inventory: ({ disks?: DiskInfo[]; tracker?: string } & Record<string, unknown>) | null;
  readiness: Readiness | null;
}

export interface Pit {
  id: string;
  serverName: string;
  seq: number;
  time: string;
  consistency: string;
  disks: Record<string, unknown>[];
}

export interface SettingsView {
  kind: "replication" | "launch";
  scope: string;
  settings: Record<string, unknown>;
  sources: Record<string, "builtin" | "default" | "server">;
  overrides: Record<string, unknown>;
}

export interface Job {
  id: string;
  type: string;
  state: string;
  serverIds: string[];
  params?: Record<string, unknown>;
  result?: unknown;
  createdAt: string;
  createdBy?: string;
  updatedAt: string;
  finishedAt: string | null;
  parentJobId: string | null;
}

export interface LogLine {
  seq: number;
  at: string;
  level: string;
  message: string;
}

export interface Replicator {
  id: string;
  name: string;
  address: string;
  state: string;
  online: boolean;
  lastSeenAt: string | null;
  registeredAt: string;
  decommissionedAt: string | null;
  assignedServers: string[];
  capacity?: Record<string, unknown>;
}

export interface Token {
  id: string;
  role: "agent" | "replicator";
  usesAllowed: number;
  usesCount: number;
  expiresAt: string;
  serverName: string | null;
  createdBy: string;
  createdAt: string;
  revokedAt: string | null;
  token?: string;
}

export interface EventItem {
  seq: number;
  at: string;
  type: string;
  serverId?: string | null;
  /** The server's name (null when the event is not about one, or it is gone). */
  server?: string | null;
  payload?: Record<string, unknown>;
}

export interface AuditRecord {
  seq: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  source: string;
  result: string;
  details: Record<string, unknown>;
}

export interface DrillReport {
  jobId: string;
  jobType: string;
  server: { id: string; name: string };
  pit: { id: string; time: string; ageSeconds: number; consistency: string };
  target: string;
  profile: string;
  readiness: { ready: boolean; verdict: string; problems: Problem[] } | null;
  steps: { name: string; startedAt: string; seconds: number; ok: boolean; message: string }[];
  checks: { name: string; ok: boolean; message: string }[];
  recoverySeconds: number | null;
  outcome: "succeeded" | "failed" | "terminated";
  error: { code: string; message: string } | null;
  outputs: { images: string[]; manifest: string | null };
  changes: string[];
  startedAt: string;
  finishedAt: string;
}
