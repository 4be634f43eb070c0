import type { ColumnType, Generated, Insertable, Selectable, Updateable } from "kysely";

/**
 * The control plane's tables, as kysely sees them. One schema for SQLite and
 * PostgreSQL, so the column types are the ones both store the same way:
 *
 * - ids are text the application generates (no autoincrement: its semantics
 *   differ between the two, and a PostgreSQL sequence hands out numbers in an
 *   order that commits do not follow);
 * - times are integer milliseconds since the epoch (`bigint` columns; the
 *   PostgreSQL pool parses int8 into a JavaScript number);
 * - JSON is text in columns named `*_json`: callers JSON.stringify and parse;
 * - flags are integers 0/1 (SQLite has no boolean type);
 * - closed sets (roles, states) are text; the TypeScript types below say which
 *   values are allowed. They are not CHECK constraints on purpose: adding a
 *   value to a CHECK in SQLite means rebuilding the table.
 *
 * The migrations in migrations/ create exactly these columns (0001 the
 * tables, 0002 and 0003 the columns and tables marked "since"); a change here needs a new
 * migration (never an edit of an applied one).
 */
export interface Schema {
  api_keys: ApiKeysTable;
  install_tokens: InstallTokensTable;
  servers: ServersTable;
  certificates: CertificatesTable;
  registrations: RegistrationsTable;
  replicators: ReplicatorsTable;
  settings: SettingsTable;
  pits: PitsTable;
  jobs: JobsTable;
  job_log: JobLogTable;
  events: EventsTable;
  audit_log: AuditLogTable;
  leases: LeasesTable;
  agent_commands: AgentCommandsTable;
  group_pits: GroupPitsTable;
  plans: PlansTable;
  pool_assignments: PoolAssignmentsTable;
  webhooks: WebhooksTable;
  rpo_status: RpoStatusTable;
  console_sessions: ConsoleSessionsTable;
  lag_samples: LagSamplesTable;
  failbacks: FailbacksTable;
  disk_generations: DiskGenerationsTable;
  repository_checks: RepositoryChecksTable;
  replica_epochs: ReplicaEpochsTable;
  replicator_ingest: ReplicatorIngestTable;
}

export type ApiKeyRole = "admin" | "operator" | "viewer";
export type InstallTokenRole = "agent" | "replicator";
export type CertificateRole = "agent" | "replicator" | "server";
export type SettingsKind = "replication" | "launch";

/** Operator API keys. Only a hash of the key is stored; `id` is the public part shown in listings. */
export interface ApiKeysTable {
  id: string;
  name: string;
  role: ApiKeyRole;
  /** Unique: the lookup on every request. */
  key_hash: string;
  created_at: number;
  created_by: string | null;
  revoked_at: number | null;
  last_used_at: number | null;
}

/**
 * Install tokens: `id` is the public prefix of the token, the secret part is
 * stored hashed. A token is usable while uses_count < uses_allowed, now <
 * expires_at and revoked_at is null.
 */
export interface InstallTokensTable {
  id: string;
  secret_hash: string;
  role: InstallTokenRole;
  uses_allowed: number;
  uses_count: Generated<number>;
  expires_at: number;
  /** The server name an agent registering with this token gets (null: the agent says). */
  server_name: string | null;
  /** Since 0008: a token for the agent of a recovery job's recovered instance. */
  recovery_job_id: ColumnType<string | null, string | null | undefined, string | null>;
  created_by: string;
  created_at: number;
  revoked_at: number | null;
}

/** Protected source servers. `name` is unique, also after decommissioning (rename to reuse it). */
export interface ServersTable {
  id: string;
  name: string;
  hostname: string | null;
  /** A DRS state name (INITIAL_SYNC, CONTINUOUS, RESCAN, ...); the agent reports it. */
  state: string;
  lag_seconds: number | null;
  backlog_bytes: number | null;
  last_seen_at: number | null;
  inventory_json: string | null;
  /** References replicators.id; set to null if that replicator row is deleted. */
  replicator_id: string | null;
  /** References install_tokens.id; set to null if that token row is deleted. */
  token_id: string | null;
  registered_at: number;
  decommissioned_at: number | null;
  /** Since 0003: the consistency group (at most one) the server belongs to. */
  group_name: ColumnType<string | null, string | null | undefined, string | null>;
  /** Since 0008: why the server's own agent may not replicate now ("failed-over", "receiving", "failed-back"). */
  fenced: ColumnType<string | null, string | null | undefined, string | null>;
  /** Since 0008: the recovery job whose recovered instance this server is. */
  recovery_job_id: ColumnType<string | null, string | null | undefined, string | null>;
}

/** Certificates the control plane's CA issued, for revocation and listing. */
export interface CertificatesTable {
  /** Hex serial number, as the certificate carries it. */
  serial: string;
  role: CertificateRole;
  /** A server id, replicator id or the control plane's own name. */
  subject_id: string;
  /** SHA-256 of the subject public key info, hex. */
  public_key_fingerprint: string;
  not_before: number;
  not_after: number;
  revoked_at: number | null;
  token_id: string | null;
}

/**
 * One row per (token, key pair) that registered: a retried registration with
 * the same token and the same public key finds its row and gets the same
 * subject and certificate back instead of spending another token use.
 */
export interface RegistrationsTable {
  token_id: string;
  public_key_fingerprint: string;
  subject_id: string;
  certificate_serial: string;
  created_at: number;
}

export interface ReplicatorsTable {
  id: string;
  name: string;
  /** Where agents send data (host:port), as the replicator advertised it. */
  address: string;
  capacity_json: Generated<string>;
  state: string;
  last_seen_at: number | null;
  registered_at: number;
  /** 1: takes no new servers (being drained); 0: normal. */
  drained: ColumnType<0 | 1, 0 | 1 | undefined, 0 | 1>;
  /** Since 0002: set when an admin decommissioned it (its certificates are revoked then). */
  decommissioned_at: number | null;
  /** Since 0002: the install token it registered with. */
  token_id: string | null;
}

/** Replication and launch settings: scope "default" is the template, otherwise a server id. */
export interface SettingsTable {
  scope: string;
  kind: SettingsKind;
  json: string;
  updated_at: number;
  updated_by: string;
}

/** The PIT catalog: a cache of the repository's PIT objects, rebuildable from the repository. */
export interface PitsTable {
  /** The PIT object's id in the repository (24 hex digits). */
  id: string;
  repository_id: string;
  /** Null when the catalog was rebuilt from a repository whose server is not (or no longer) registered. */
  server_id: string | null;
  server_name: string;
  seq: number;
  time_ms: number;
  consistency: "application" | "filesystem" | "crash" | "none";
  disks_json: string;
  labels_json: Generated<string>;
}

export type JobType = "drill" | "recovery" | "failback" | (string & {});
export type JobState = "pending" | "running" | "succeeded" | "failed" | "terminated" | (string & {});

export interface JobsTable {
  id: string;
  type: JobType;
  state: JobState;
  server_ids_json: string;
  params_json: string;
  result_json: string | null;
  created_at: number;
  created_by: string;
  /** The control-plane instance (or worker) running the job. */
  claimed_by: string | null;
  claimed_at: number | null;
  finished_at: number | null;
  /** Since 0002: the last change of state or log (null in rows written before 0002). */
  updated_at: number | null;
  /** Since 0004: the plan run whose wave this job is. */
  parent_job_id: ColumnType<string | null, string | null | undefined, string | null>;
  /** Since 0004: an operator asked to stop it (running) or remove what it made (a finished drill). */
  terminate_requested_at: ColumnType<number | null, number | null | undefined, number | null>;
}

/** Since 0004: a saved recovery plan: servers launched together, in waves. */
export interface PlansTable {
  id: string;
  name: string;
  description: string | null;
  /** [{ name, servers: [server ids] }], in launch order. */
  waves_json: string;
  /** Launch options every wave uses (target, profile, ...). */
  options_json: string;
  created_at: number;
  created_by: string;
  updated_at: number;
}

/** A job's step-by-step log: seq counts from 1 within a job. Rows go when their job is deleted. */
export interface JobLogTable {
  job_id: string;
  seq: number;
  at: number;
  level: "debug" | "info" | "warn" | "error";
  message: string;
}

/**
 * State changes for consoles and watchers. seq is assigned by appendEvent()
 * under the append lock, so it grows in commit order: a reader that asks for
 * "seq > last seen" never misses an event.
 */
export interface EventsTable {
  seq: number;
  at: number;
  type: string;
  server_id: string | null;
  payload_json: string;
}

/** The hash-chained audit log (src/control/audit.ts). Append only. */
export interface AuditLogTable {
  seq: number;
  at: number;
  actor: string;
  action: string;
  target: string;
  source: string;
  result: string;
  details_json: string;
  prev_hash: string;
  hash: string;
}

/** Named leases for work that must run on one control-plane instance at a time (leases.ts). */
export interface LeasesTable {
  name: string;
  holder: string;
  expires_at: number;
}

/** "failback" (since 0008): re-read the mode (replicate, receive, fenced) now. */
export type AgentCommandKind = "make-pit" | "group-pit" | "rescan" | "set-bandwidth" | "failback";
/** queued → delivered → (frozen: group-pit only) → done | failed | expired. */
export type AgentCommandState = "queued" | "delivered" | "frozen" | "done" | "failed" | "expired";

/** Since 0003: commands for agents, fetched by the agent's long poll (commands.ts). */
export interface AgentCommandsTable {
  id: string;
  /** References servers.id: only that server's agent sees or completes the command. */
  server_id: string;
  kind: AgentCommandKind;
  params_json: string;
  state: AgentCommandState;
  created_at: number;
  updated_at: number;
  /** The last delivery: a command delivered and not finished is delivered again 60 s later. */
  delivered_at: number | null;
  /** Past this, an unfinished command is expired (swept when read). */
  deadline_at: number;
  result_json: string | null;
  error_code: string | null;
  error_message: string | null;
  /** References group_pits.id for kind group-pit. */
  group_pit_id: string | null;
  /** The job (jobs.id) that shows the request in `lifeboat jobs`. */
  job_id: string | null;
}

/** freezing → released (every member froze) → done | failed; or freezing → aborted. */
export type GroupPitState = "freezing" | "released" | "aborted" | "done" | "failed";

/** Since 0003: one consistency point across the servers of a group; its members are agent_commands rows. */
export interface GroupPitsTable {
  id: string;
  group_name: string;
  state: GroupPitState;
  /** The one consistency time of the whole group, chosen when the last member froze. */
  taken_at: number | null;
  barrier_timeout_ms: number;
  job_id: string;
  created_at: number;
  updated_at: number;
}

export type AgentCommand = Selectable<AgentCommandsTable>;
export type GroupPit = Selectable<GroupPitsTable>;
export type ApiKey = Selectable<ApiKeysTable>;
export type NewApiKey = Insertable<ApiKeysTable>;
export type InstallToken = Selectable<InstallTokensTable>;
export type NewInstallToken = Insertable<InstallTokensTable>;
export type Server = Selectable<ServersTable>;
export type NewServer = Insertable<ServersTable>;
export type ServerUpdate = Updateable<ServersTable>;
export type Certificate = Selectable<CertificatesTable>;
export type NewCertificate = Insertable<CertificatesTable>;
export type Registration = Selectable<RegistrationsTable>;
export type Replicator = Selectable<ReplicatorsTable>;
export type NewReplicator = Insertable<ReplicatorsTable>;
export type Settings = Selectable<SettingsTable>;
export type PitRow = Selectable<PitsTable>;
export type NewPitRow = Insertable<PitsTable>;
export type Job = Selectable<JobsTable>;
export type Plan = Selectable<PlansTable>;
export type NewJob = Insertable<JobsTable>;
export type JobUpdate = Updateable<JobsTable>;
export type JobLogLine = Selectable<JobLogTable>;
export type EventRow = Selectable<EventsTable>;
export type AuditRecord = Selectable<AuditLogTable>;
export type Lease = Selectable<LeasesTable>;

/** Since 0007: the replicator pool's choice for a server without a replicatorId setting. */
export interface PoolAssignmentsTable {
  server_id: string;
  replicator_id: string;
  assigned_at: number;
  /** Why it was (re)assigned: "new server", "replicator disconnected", "replicator drained", ... */
  reason: string;
}

/**
 * Since 0005: a webhook follows the events table from cursor_seq (the last
 * event it delivered or skipped), one event at a time (webhooks.ts).
 */
export interface WebhooksTable {
  id: string;
  url: string;
  /** Event types it gets (["*"]: every type). */
  event_types_json: string;
  /** The HMAC signing secret, in clear: it must sign. Never logged, shown once at creation. */
  secret: string;
  /** CA certificates (PEM) trusted for this URL instead of the system's; null: the system's. */
  ca_pem: string | null;
  created_at: number;
  created_by: string;
  cursor_seq: number;
  /** Failed attempts at the event after cursor_seq (0 after a delivery). */
  failures: ColumnType<number, number | undefined, number>;
  /** Not before this time (the backoff after a failure). */
  next_attempt_at: number;
  last_delivered_at: number | null;
  last_error: string | null;
}

/** Since 0005: whether a server's RPO was breached at the last check (rpo.ts). */
export interface RpoStatusTable {
  server_id: string;
  breached: 0 | 1;
  changed_at: number;
}

export type Webhook = Selectable<WebhooksTable>;

/** Since 0006: web console sign-ins. The cookie value is never stored, only its SHA-256. */
export interface ConsoleSessionsTable {
  token_hash: string;
  /** References api_keys.id: the session has that key's role, and ends when the key is revoked. */
  api_key_id: string;
  created_at: number;
  expires_at: number;
  /** The address that signed in. */
  source: string;
}

/** Since 0006: a server's lag, sampled on heartbeats at most once a minute, kept about a day. */
export interface LagSamplesTable {
  server_id: string;
  at: number;
  lag_seconds: number | null;
  backlog_bytes: number | null;
}

/** syncing → cutover → ready (then the original direction resumes) | failed | cancelled. */
export type FailbackState = "syncing" | "cutover" | "ready" | "failed" | "cancelled";

/** Since 0008: a failback, from a recovered instance's server back to the original server. */
export interface FailbacksTable {
  id: string;
  job_id: string;
  source_server_id: string;
  target_server_id: string;
  state: FailbackState;
  /** [{source, target, sizeBytes}]: which source disk goes onto which target disk. */
  disks_json: string;
  /** The source states the target syncs to, by pass number (failback.ts). */
  pins_json: ColumnType<string, string | undefined, string>;
  /** What the target reported: pass, cursor, bytes received, verify outcome. */
  progress_json: ColumnType<string, string | undefined, string>;
  cutover_pit_id: string | null;
  error_code: string | null;
  error_message: string | null;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
}

/** Since 0008: each disk's generation id, new at every recovery and failback. */
export interface DiskGenerationsTable {
  server_id: string;
  disk_index: number;
  generation: string;
  changed_at: number;
  reason: string;
}

export type Failback = Selectable<FailbacksTable>;
export type DiskGeneration = Selectable<DiskGenerationsTable>;

/** Since 0010: the last repository stats and verify results (repository-checks.ts), one row per kind. */
export interface RepositoryChecksTable {
  kind: "stats" | "verify";
  /** When the check finished. */
  at: number;
  /** 1: no damage found (stats: always 1). */
  ok: 0 | 1;
  duration_ms: number;
  result_json: string;
}

/** Since 0009: the epoch a server's replica is written with, and who took it (store/head.ts, "Fencing"). */
export interface ReplicaEpochsTable {
  server_id: string;
  /** The replicator id, or `control-plane:INSTANCE` for an embedded replicator. */
  holder: string;
  epoch: number;
  taken_at: number;
}

/**
 * Since 0011: what a separate replicator reported ingesting in its last
 * heartbeat, counted since `started_at` (its process start; the counters
 * start at 0 again after a restart).
 */
export interface ReplicatorIngestTable {
  replicator_id: string;
  started_at: number;
  received_bytes: number;
  stored_bytes: number;
  sessions: number;
  /** {server name: bytes of block data applied for it since started_at}. */
  servers_json: string;
  reported_at: number;
}
