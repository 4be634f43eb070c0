import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Clock } from "../base/index.js";
import type { Database } from "./db/index.js";
import { assignments } from "./replicators.js";
import { repositoryStatus } from "./repository-checks.js";
import { rpoStatuses, pitSummary } from "./rpo.js";

/**
 * Prometheus metrics (docs/metrics-and-events.md lists each one).
 *
 * Everything about servers, replicators, jobs and webhooks is read from the
 * database at scrape time, into a registry made for that scrape: several
 * control-plane instances share one database, and every one of them answers
 * a scrape with the same numbers, with nothing kept in memory that another
 * instance would contradict (and two scrapes at once cannot mix). What is
 * per instance is per instance by nature: the request-duration histogram of
 * this instance's API, what this instance's embedded replicator ingested
 * (separate replicators report theirs with their heartbeats, into the
 * database), and the process metrics (process_*, nodejs_*). The repository's size and
 * last verify are read from what repository-checks.ts recorded, never
 * computed at scrape time.
 */
export const SERVER_STATES = [
  "REGISTERED",
  "INITIATING",
  "INITIAL_SYNC",
  "CONTINUOUS",
  "BACKLOG",
  "RESCAN",
  "STALLED",
  "DISCONNECTED",
  "STOPPED",
  "FENCED",
  "RECEIVING",
] as const;

/** The label value of servers on the control plane's own replicator. */
export const EMBEDDED_REPLICATOR = "embedded";

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** One app's request metrics: its own registry, so several apps in one process (tests) stay apart. */
export class RequestMetrics {
  readonly registry = new Registry();
  private readonly durations = new Histogram({
    name: "lifeboat_http_request_duration_seconds",
    help: "API request durations of this control-plane instance, by route pattern and status code",
    labelNames: ["method", "route", "status_code"] as const,
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  });

  /** `route` is the pattern ("/api/v1/jobs/:id"), never the URL: the label set must stay small. */
  observe(method: string, route: string, statusCode: number, seconds: number): void {
    this.durations.observe({ method, route, status_code: String(statusCode) }, seconds);
  }
}

let processRegistry: Registry | undefined;
/** process_* and nodejs_* metrics, collected once per process however many apps it runs. */
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export interface ScrapeOptions {
  database: Database;
  clock: Clock;
  /** A replicator silent for longer is down (the config's heartbeatTimeoutSeconds). */
  heartbeatTimeoutSeconds: number;
  requests: RequestMetrics;
  /** This instance's embedded replicator, when it runs one. */
  ingest?: IngestSource;
}

/** What an embedded replicator tells the metrics: bytes applied by server name, streams open, bytes stored. */
export interface IngestSource {
  ingested(): Map<string, number>;
  servers(): string[];
  ingestCounters?(): { storedBytes: number };
}

/** The text of one scrape, in the Prometheus text format 0.0.4. */
export async function scrapeMetrics(opts: ScrapeOptions): Promise<string> {
  const registry = new Registry();
  await Promise.all([
    serverMetrics(registry, opts),
    replicatorMetrics(registry, opts),
    jobMetrics(registry, opts.database),
    webhookMetrics(registry, opts.database),
    repositoryMetrics(registry, opts.database),
    ingestMetrics(registry, opts),
  ]);
  const parts = await Promise.all([
    registry.metrics(),
    opts.requests.registry.metrics(),
    processMetrics().metrics(),
  ]);
  return parts.join("");
}

export const METRICS_CONTENT_TYPE = new Registry().contentType;

function gauge<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[]) {
  return new Gauge<L>({ name, help, labelNames, registers: [registry] });
}

async function serverMetrics(registry: Registry, opts: ScrapeOptions): Promise<void> {
  const { database, clock } = opts;
  const labels = ["server", "server_id", "replicator"] as const;
  const g = {
    lag: gauge(
      registry,
      "lifeboat_server_lag_seconds",
      "Age of the oldest write not yet replicated, as the agent last reported it",
      labels,
    ),
    backlog: gauge(
      registry,
      "lifeboat_server_backlog_bytes",
      "Bytes written on the source and not yet replicated, as the agent last reported it",
      labels,
    ),
    state: gauge(
      registry,
      "lifeboat_server_state",
      "Replication state: 1 for the server's current state, 0 for the others",
      [...labels, "state"],
    ),
    lastSeen: gauge(
      registry,
      "lifeboat_server_last_seen_timestamp_seconds",
      "When the server's agent was last heard from (Unix time)",
      labels,
    ),
    pitTime: gauge(
      registry,
      "lifeboat_server_last_pit_timestamp_seconds",
      "Time of the server's newest PIT (Unix time)",
      labels,
    ),
    pitAge: gauge(registry, "lifeboat_server_last_pit_age_seconds", "Age of the server's newest PIT", labels),
    pits: gauge(registry, "lifeboat_server_pits", "PITs of the server in the catalog", labels),
    rpo: gauge(
      registry,
      "lifeboat_server_rpo_seconds",
      "The server's RPO target (replication setting rpoMinutes)",
      labels,
    ),
    breach: gauge(
      registry,
      "lifeboat_server_rpo_breached",
      "1 when the newest PIT (or, without one, the registration) is older than the RPO target",
      labels,
    ),
  };
  const [servers, assigned, replicators, pits, rpo] = await Promise.all([
    database.db
      .selectFrom("servers")
      .select(["id", "name", "state", "lag_seconds", "backlog_bytes", "last_seen_at"])
      .where("decommissioned_at", "is", null)
      .execute(),
    assignments(database),
    database.db.selectFrom("replicators").select(["id", "name"]).execute(),
    pitSummary(database),
    rpoStatuses(database, clock),
  ]);
  const replicatorName = new Map(replicators.map((r) => [r.id, r.name]));
  const rpoOf = new Map(rpo.map((r) => [r.serverId, r]));
  const now = clock.now();
  for (const s of servers) {
    const rep = assigned.get(s.id) ?? null;
    const l = {
      server: s.name,
      server_id: s.id,
      replicator: rep === null ? EMBEDDED_REPLICATOR : (replicatorName.get(rep) ?? rep),
    };
    if (s.lag_seconds !== null) g.lag.set(l, Number(s.lag_seconds));
    if (s.backlog_bytes !== null) g.backlog.set(l, Number(s.backlog_bytes));
    for (const state of new Set<string>([...SERVER_STATES, s.state]))
      g.state.set({ ...l, state }, state === s.state ? 1 : 0);
    if (s.last_seen_at !== null) g.lastSeen.set(l, Number(s.last_seen_at) / 1000);
    const pit = pits.get(s.id);
    g.pits.set(l, pit?.count ?? 0);
    if (pit !== undefined) {
      g.pitTime.set(l, pit.lastAt / 1000);
      g.pitAge.set(l, Math.max(0, (now - pit.lastAt) / 1000));
    }
    const r = rpoOf.get(s.id);
    if (r !== undefined) {
      g.rpo.set(l, r.rpoSeconds);
      g.breach.set(l, r.breached ? 1 : 0);
    }
  }
}

async function replicatorMetrics(registry: Registry, opts: ScrapeOptions): Promise<void> {
  const labels = ["replicator", "replicator_id"] as const;
  const up = gauge(
    registry,
    "lifeboat_replicator_up",
    "1 when the replicator sent a heartbeat within the heartbeat timeout",
    labels,
  );
  const lastSeen = gauge(
    registry,
    "lifeboat_replicator_last_seen_timestamp_seconds",
    "When the replicator was last heard from (Unix time)",
    labels,
  );
  const servers = gauge(
    registry,
    "lifeboat_replicator_assigned_servers",
    'Servers assigned to the replicator ("embedded": the control plane\'s own)',
    labels,
  );
  const [rows, assigned] = await Promise.all([
    opts.database.db
      .selectFrom("replicators")
      .select(["id", "name", "state", "last_seen_at"])
      .where("decommissioned_at", "is", null)
      .execute(),
    assignments(opts.database),
  ]);
  const count = new Map<string | null, number>();
  for (const rep of assigned.values()) count.set(rep, (count.get(rep) ?? 0) + 1);
  const now = opts.clock.now();
  servers.set({ replicator: EMBEDDED_REPLICATOR, replicator_id: "" }, count.get(null) ?? 0);
  for (const r of rows) {
    const l = { replicator: r.name, replicator_id: r.id };
    const seen = r.last_seen_at === null ? null : Number(r.last_seen_at);
    const online =
      seen !== null && r.state !== "DISCONNECTED" && now - seen <= opts.heartbeatTimeoutSeconds * 1000;
    up.set(l, online ? 1 : 0);
    if (seen !== null) lastSeen.set(l, seen / 1000);
    servers.set(l, count.get(r.id) ?? 0);
  }
}

async function jobMetrics(registry: Registry, database: Database): Promise<void> {
  const jobs = gauge(registry, "lifeboat_jobs", "Jobs in the database, by type and state", ["type", "state"]);
  const rows = await database.db
    .selectFrom("jobs")
    .select((eb) => ["type", "state", eb.fn.countAll().as("n")])
    .groupBy(["type", "state"])
    .execute();
  for (const r of rows) jobs.set({ type: r.type, state: r.state }, Number(r.n));
}

async function webhookMetrics(registry: Registry, database: Database): Promise<void> {
  const labels = ["webhook_id"] as const;
  const pending = gauge(
    registry,
    "lifeboat_webhook_pending_events",
    "Events the webhook has yet to deliver",
    labels,
  );
  const failures = gauge(
    registry,
    "lifeboat_webhook_failures",
    "Failed attempts at the webhook's next event (0 after a delivery)",
    labels,
  );
  const delivered = gauge(
    registry,
    "lifeboat_webhook_last_delivery_timestamp_seconds",
    "When the webhook last delivered an event (Unix time)",
    labels,
  );
  const hooks = await database.db
    .selectFrom("webhooks")
    .select(["id", "event_types_json", "cursor_seq", "failures", "last_delivered_at"])
    .execute();
  for (const h of hooks) {
    const l = { webhook_id: h.id };
    const types = JSON.parse(h.event_types_json) as string[];
    let q = database.db
      .selectFrom("events")
      .select((eb) => eb.fn.countAll().as("n"))
      .where("seq", ">", Number(h.cursor_seq));
    if (!types.includes("*")) q = q.where("type", "in", types);
    pending.set(l, Number((await q.executeTakeFirst())?.n ?? 0));
    failures.set(l, Number(h.failures));
    if (h.last_delivered_at !== null) delivered.set(l, Number(h.last_delivered_at) / 1000);
  }
}

async function repositoryMetrics(registry: Registry, database: Database): Promise<void> {
  const { stats, verify } = await repositoryStatus(database);
  if (stats !== null) {
    const stored = gauge(
      registry,
      "lifeboat_repository_stored_bytes",
      "Bytes stored in the repository by object kind (packs, pages, trash, other), at the last stats refresh",
      ["kind"],
    );
    const objects = gauge(
      registry,
      "lifeboat_repository_objects",
      "Objects in the repository by kind, at the last stats refresh",
      ["kind"],
    );
    for (const kind of ["packs", "pages", "trash", "other"] as const) {
      stored.set({ kind }, stats.storedBytes[kind]);
      objects.set({ kind }, stats.objects[kind]);
    }
    gauge(registry, "lifeboat_repository_pits", "PITs in the repository, at the last stats refresh", []).set(
      stats.pits,
    );
    gauge(
      registry,
      "lifeboat_repository_stats_timestamp_seconds",
      "When the repository's size was last measured (Unix time)",
      [],
    ).set(Date.parse(stats.at) / 1000);
  }
  if (verify !== null) {
    const one = (name: string, help: string, value: number) => gauge(registry, name, help, []).set(value);
    one(
      "lifeboat_repository_chunks",
      "Chunks the repository's PITs and replicas reference, at the last verify",
      verify.referencedChunks,
    );
    one(
      "lifeboat_repository_last_verify_timestamp_seconds",
      "When the last repository verify finished (Unix time)",
      Date.parse(verify.at) / 1000,
    );
    one(
      "lifeboat_repository_last_verify_success",
      "1 when the last repository verify found no damage, else 0",
      verify.ok ? 1 : 0,
    );
    one(
      "lifeboat_repository_last_verify_damaged_objects",
      "Damaged objects the last repository verify found",
      verify.damage.objects,
    );
    one(
      "lifeboat_repository_last_verify_duration_seconds",
      "How long the last repository verify took",
      verify.durationMs / 1000,
    );
    if (verify.lastReadDataAt !== null)
      one(
        "lifeboat_repository_last_data_verify_timestamp_seconds",
        "When a verify last read every referenced chunk's data (Unix time)",
        Date.parse(verify.lastReadDataAt) / 1000,
      );
  }
}

/**
 * What replicators ingested: this instance's embedded replicator from its
 * memory, separate replicators from what their last heartbeat reported
 * (table replicator_ingest: the same on every instance). Counters restart
 * from 0 when the replicator (or the instance) does.
 */
async function ingestMetrics(registry: Registry, opts: ScrapeOptions): Promise<void> {
  const source = opts.ingest;
  const rows = await opts.database.db
    .selectFrom("replicator_ingest as i")
    .innerJoin("replicators as r", "r.id", "i.replicator_id")
    .select([
      "r.id",
      "r.name",
      "r.state",
      "r.last_seen_at",
      "i.received_bytes",
      "i.stored_bytes",
      "i.sessions",
      "i.servers_json",
    ])
    .where("r.decommissioned_at", "is", null)
    .execute();
  if (source === undefined && rows.length === 0) return;
  const labels = ["replicator", "replicator_id"] as const;
  const ingest = new Counter({
    name: "lifeboat_replicator_ingest_bytes_total",
    help: "Bytes of block data the replicator received from agents and applied since it started",
    labelNames: labels,
    registers: [registry],
  });
  const stored = new Counter({
    name: "lifeboat_replicator_stored_bytes_total",
    help: "Bytes of new chunks (compressed, deduplicated) the replicator wrote to the repository since it started",
    labelNames: labels,
    registers: [registry],
  });
  const streams = gauge(
    registry,
    "lifeboat_replicator_sessions",
    "Replication streams the replicator holds now (0 for a replicator that is not up)",
    labels,
  );
  const perServer = new Counter({
    name: "lifeboat_server_replicated_bytes_total",
    help: "Bytes of block data a replicator applied for the server since the replicator started",
    labelNames: ["server", "server_id", "replicator"] as const,
    registers: [registry],
  });
  const ids = new Map(
    (await opts.database.db.selectFrom("servers").select(["id", "name"]).execute()).map((r) => [
      r.name,
      r.id,
    ]),
  );
  const now = opts.clock.now();
  for (const r of rows) {
    const l = { replicator: r.name, replicator_id: r.id };
    for (const [server, bytes] of Object.entries(JSON.parse(r.servers_json) as Record<string, number>))
      perServer.inc({ server, server_id: ids.get(server) ?? "", replicator: r.name }, bytes);
    const seen = r.last_seen_at === null ? null : Number(r.last_seen_at);
    const up =
      seen !== null && r.state !== "DISCONNECTED" && now - seen <= opts.heartbeatTimeoutSeconds * 1000;
    ingest.inc(l, Number(r.received_bytes));
    stored.inc(l, Number(r.stored_bytes));
    streams.set(l, up ? Number(r.sessions) : 0);
  }
  if (source === undefined) return;
  const counts = source.ingested();
  let total = 0;
  for (const [server, bytes] of counts) {
    perServer.inc({ server, server_id: ids.get(server) ?? "", replicator: EMBEDDED_REPLICATOR }, bytes);
    total += bytes;
  }
  const l = { replicator: EMBEDDED_REPLICATOR, replicator_id: "" };
  ingest.inc(l, total);
  if (source.ingestCounters !== undefined) stored.inc(l, source.ingestCounters().storedBytes);
  streams.set(l, source.servers().length);
}
