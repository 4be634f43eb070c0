import { X509Certificate } from "node:crypto";
import type { Agent } from "undici";
import { type Clock, type Logger, silentLogger, systemClock } from "../base/index.js";
import { createApiDispatcher, csrForKey, fetchBytes, fetchJson, proxyFromEnvironment } from "../net/index.js";

export interface AgentCommand {
  id: string;
  kind: "make-pit" | "group-pit" | "rescan" | "set-bandwidth" | "failback";
  params: Record<string, unknown>;
}

/** What an agent reports when it made a PIT: the PITs id (POINT_DONE's pitId). */
export interface PitReport {
  pitId: string;
}

/** The replication settings the agent applies (others are the control plane's own). */
export interface ReplicationSettingsView {
  bandwidthMbps: number | null;
  pitIntervalMinutes: number;
  [key: string]: unknown;
}

export type CommandOutcome =
  { ok: true; result: Record<string, unknown> } | { ok: false; code: string; message: string };

export interface ControlClientOptions {
  /** The control plane, https://host[:port]. */
  endpoint: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  clock?: Clock;
  logger?: Logger;
}

/** Idle connections stay open past one long poll (60 s at most), so polls reuse them. */
const KEEP_ALIVE_MS = 65_000;
/** Beyond a request's own wait: slack for the network and a busy server. */
const SLACK_MS = 15_000;

/**
 * The agent's side of the control API, over HTTPS with its client
 * certificate (mutual TLS). Every method throws the LifeboatError that
 * fetchJson makes of a failure (the server's code, or NET_* for the
 * network); the caller's run loop decides on retries (`err.retryable`).
 */
/** What the control plane wants of this agent now (GET /api/v1/agent/settings). */
export type AgentMode =
  | { mode: "replicate"; generations?: { index: number; generation: string }[] }
  | { mode: "receive"; failbackId: string }
  | { mode: "fenced"; reason: string };

/** A failback pass for the receiving agent (control/failback.ts says what the kinds mean). */
export interface FailbackPass {
  failbackId: string;
  end?: { state: string; generations?: { index: number; generation: string }[] };
  idleMs?: number;
  pass?: number;
  kind?: "full" | "changes" | "verify";
  final?: boolean;
  disks?: { source: number; target: number; sizeBytes: number; chunkSize: number; chunkCount: number }[];
}

export class ControlClient {
  private readonly endpoint: string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private certPem: string;
  private dispatcher: Agent;

  constructor(private readonly opts: ControlClientOptions) {
    this.endpoint = opts.endpoint.replace(/\/+$/, "");
    this.clock = opts.clock ?? systemClock;
    this.logger = opts.logger ?? silentLogger;
    this.certPem = opts.certPem;
    this.dispatcher = this.makeDispatcher();
  }

  private makeDispatcher(): Agent {
    const url = new URL(this.endpoint);
    const proxy = proxyFromEnvironment(url.hostname.replace(/^\[|\]$/g, ""), Number(url.port || 443));
    return createApiDispatcher({
      ...(proxy ? { proxy } : {}),
      caPem: this.opts.caPem,
      clientCertPem: this.certPem,
      clientKeyPem: this.opts.keyPem,
      keepAliveMs: KEEP_ALIVE_MS,
      clock: this.clock,
    });
  }

  private call<T>(
    path: string,
    o: { method?: "GET" | "POST"; body?: unknown; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<T> {
    return fetchJson<T>(this.dispatcher, `${this.endpoint}${path}`, o);
  }

  /**
   * The server's effective replication settings (GET /api/v1/agent/settings),
   * and the data address of the separate replicator it is assigned to (null:
   * the control plane's own port).
   */
  async settings(): Promise<{
    replication: ReplicationSettingsView;
    dataAddress: string | null;
    mode?: AgentMode;
  }> {
    return this.call<{ replication: ReplicationSettingsView; dataAddress: string | null; mode?: AgentMode }>(
      "/api/v1/agent/settings",
    );
  }

  /** The current pass of a failback this server receives, reporting the one it completed. */
  async failbackPass(id: string, completed?: number): Promise<FailbackPass> {
    return this.call<FailbackPass>(`/api/v1/agent/failback/${encodeURIComponent(id)}/pass`, {
      method: "POST",
      body: completed === undefined ? {} : { completed },
    });
  }

  /** Sends the hashes of chunks `first`…; answers a chunk batch with the source's chunks that differ. */
  async failbackCompare(
    id: string,
    req: { pass: number; disk: number; first: number; hashes: Buffer },
  ): Promise<Buffer> {
    return fetchBytes(
      this.dispatcher,
      `${this.endpoint}/api/v1/agent/failback/${encodeURIComponent(id)}/compare`,
      {
        method: "POST",
        body: { ...req, hashes: req.hashes.toString("base64") },
        timeoutMs: 120_000,
      },
    );
  }

  /** A chunk batch of what changed on the source since the previous pass, from chunk `from`. */
  async failbackChanges(id: string, req: { pass: number; disk: number; from: number }): Promise<Buffer> {
    return fetchBytes(
      this.dispatcher,
      `${this.endpoint}/api/v1/agent/failback/${encodeURIComponent(id)}/changes`,
      {
        method: "POST",
        body: req,
        timeoutMs: 120_000,
      },
    );
  }

  /** Tells the control plane why the failback cannot write (shown to the operator). */
  async failbackProblem(id: string, problem: { code: string; message: string }): Promise<void> {
    await this.call(`/api/v1/agent/failback/${encodeURIComponent(id)}/problem`, {
      method: "POST",
      body: problem,
    });
  }

  /**
   * Reports state, lag, backlog and inventory; answers how often to report.
   * The control plane keeps the `boot` part of the inventory it has when
   * `inventory` comes without one (the agent sends it only when it changed).
   */
  async heartbeat(report: {
    state: string;
    lagSeconds?: number;
    backlogBytes?: number;
    inventory?: Record<string, unknown>;
  }): Promise<{ heartbeatSeconds: number }> {
    const r = await this.call<{ heartbeatSeconds: number }>("/api/v1/agent/heartbeat", {
      method: "POST",
      body: report,
    });
    return { heartbeatSeconds: r.heartbeatSeconds };
  }

  /**
   * The commands queued for this server, waiting up to `waitSeconds` (at most
   * 60) for one; an empty list when none came. Each command may come again
   * (after 60 s, if not completed): run a command id once. Aborting `signal`
   * rejects with the abort.
   */
  async nextCommands(opts: { waitSeconds: number; signal?: AbortSignal }): Promise<AgentCommand[]> {
    const wait = Math.max(0, Math.min(60, Math.floor(opts.waitSeconds)));
    const r = await this.call<{ commands: AgentCommand[] }>(`/api/v1/agent/commands?waitSeconds=${wait}`, {
      timeoutMs: wait * 1000 + SLACK_MS,
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
    });
    return r.commands;
  }

  /**
   * Group PIT barrier: this server froze for group-pit command `commandId`.
   * Waits (up to the command's barrierTimeoutMs) until every member froze:
   * proceed with `takenAt` as the PIT's time; or proceed false: thaw and
   * make no PIT (the group PIT was aborted).
   */
  async frozen(commandId: string): Promise<{ proceed: boolean; takenAt?: number }> {
    const r = await this.call<{ proceed: boolean; takenAt?: number }>(
      `/api/v1/agent/commands/${encodeURIComponent(commandId)}/frozen`,
      { method: "POST", body: {}, timeoutMs: 60_000 + SLACK_MS },
    );
    return r.takenAt !== undefined ? { proceed: r.proceed, takenAt: r.takenAt } : { proceed: r.proceed };
  }

  /**
   * Reports how a command ended. For make-pit and group-pit, `result` is a
   * PitReport ({pitId}); it may also carry seq, takenAt (ms), consistency and
   * disks, which the control plane keeps when its catalog lags. Idempotent:
   * the same outcome again is accepted; COMMAND_FINISHED means the control
   * plane had already ended it otherwise (expired, group aborted).
   */
  async complete(commandId: string, outcome: CommandOutcome): Promise<void> {
    await this.call(`/api/v1/agent/commands/${encodeURIComponent(commandId)}/complete`, {
      method: "POST",
      body: outcome,
      timeoutMs: 30_000,
    });
  }

  /**
   * Renews the client certificate through POST /api/v1/renew when less than
   * a third of its validity is left, keeping the key; returns the new
   * certificate (PEM) — the caller stores it — or null when not due. Later
   * requests use the new certificate.
   */
  async renewIfDue(): Promise<string | null> {
    const cert = new X509Certificate(this.certPem);
    const notBefore = Date.parse(cert.validFrom);
    const notAfter = Date.parse(cert.validTo);
    const left = notAfter - this.clock.now();
    if (left >= (notAfter - notBefore) / 3) return null;
    const csr = await csrForKey({ keyPem: this.opts.keyPem, commonName: "lifeboat-agent" });
    const r = await this.call<{ certificatePem: string; notAfter: string }>("/api/v1/renew", {
      method: "POST",
      body: { csr },
    });
    const old = this.dispatcher;
    this.certPem = r.certificatePem;
    this.dispatcher = this.makeDispatcher();
    await old.close().catch(() => undefined);
    this.logger.info({ notAfter: r.notAfter }, "client certificate renewed");
    return r.certificatePem;
  }

  /** Closes the connections; requests in flight are aborted. */
  async close(): Promise<void> {
    await this.dispatcher.destroy();
  }
}
