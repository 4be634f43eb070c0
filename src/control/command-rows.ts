import { EventEmitter } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import { type Clock, isLifeboatError } from "../base/index.js";
import type { AgentCommand, AgentCommandKind, AgentCommandState, Database } from "./db/index.js";
import { httpError } from "./http-error.js";
import { logJobStep } from "./jobs.js";
import { newId } from "./secrets.js";

/**
 * The rows behind commands for agents (commands.ts says what they are) and
 * the few moves every kind shares: make one, finish one exactly once, end
 * its job, read one on behalf of its own server, show one.
 */
export const COMMAND_DEADLINE_MS = 10 * 60_000;
export const REDELIVER_AFTER_MS = 60_000;
export const DEFAULT_BARRIER_TIMEOUT_MS = 1500;
export const CONSISTENCY_LEVELS = ["application", "filesystem", "crash", "none"] as const;
export type ConsistencyLevel = (typeof CONSISTENCY_LEVELS)[number];
export const GROUP_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export const FINISHED: readonly AgentCommandState[] = ["done", "failed", "expired"];
export const PIT_KINDS: ReadonlySet<AgentCommandKind> = new Set(["make-pit", "group-pit"]);

export interface CommandView {
  id: string;
  serverId: string;
  kind: AgentCommandKind;
  params: Record<string, unknown>;
  state: AgentCommandState;
  createdAt: string;
  updatedAt: string;
  deadlineAt: string;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  groupPitId: string | null;
  jobId: string | null;
}

export type Outcome =
  { ok: true; result: Record<string, unknown> } | { ok: false; code: string; message: string };

/**
 * Wakes waiters in this process: a long poll when a command for its server
 * is created, a barrier when a member of its group PIT froze or failed.
 * Waiters re-check the database as well, which covers other processes.
 */
export class CommandNotifier {
  private readonly emitter = new EventEmitter().setMaxListeners(0);
  private closed = false;

  notify(key: string): void {
    this.emitter.emit(key);
  }

  /** Resolves after `ms`, on notify(key), on abort of `signal` or on close(), whichever is first. */
  async wait(key: string, ms: number, signal?: AbortSignal): Promise<void> {
    if (this.closed || signal?.aborted === true || ms <= 0) return;
    const stop = new AbortController();
    const wake = () => stop.abort();
    this.emitter.once(key, wake);
    this.emitter.once("close", wake);
    signal?.addEventListener("abort", wake, { once: true });
    try {
      await delay(ms, undefined, { signal: stop.signal }).catch(() => undefined);
    } finally {
      this.emitter.removeListener(key, wake);
      this.emitter.removeListener("close", wake);
      signal?.removeEventListener("abort", wake);
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Wakes every waiter now and later ones at once: the app is closing. */
  close(): void {
    this.closed = true;
    this.emitter.emit("close");
  }
}

export function newCommand(
  clock: Clock,
  serverId: string,
  kind: AgentCommandKind,
  params: Record<string, unknown>,
  links: { jobId?: string; groupPitId?: string },
): AgentCommand {
  const now = clock.now();
  return {
    id: newId("cmd"),
    server_id: serverId,
    kind,
    params_json: JSON.stringify(params),
    state: "queued",
    created_at: now,
    updated_at: now,
    delivered_at: null,
    deadline_at: now + COMMAND_DEADLINE_MS,
    result_json: null,
    error_code: null,
    error_message: null,
    group_pit_id: links.groupPitId ?? null,
    job_id: links.jobId ?? null,
  };
}

/** Moves an unfinished command to a finished state; false when it was already finished. */
export async function finish(
  database: Database,
  clock: Clock,
  row: AgentCommand,
  state: AgentCommandState,
  result: Record<string, unknown> | null,
  error: { code: string; message: string } | null,
): Promise<boolean> {
  const r = await database.db
    .updateTable("agent_commands")
    .set({
      state,
      updated_at: clock.now(),
      result_json: result === null ? null : JSON.stringify(result),
      error_code: error?.code ?? null,
      error_message: error?.message ?? null,
    })
    .where("id", "=", row.id)
    .where("state", "not in", FINISHED)
    .executeTakeFirst();
  return Number(r.numUpdatedRows) === 1;
}

/** Logs the end of a job; a job someone else already finished stays as it is. */
export async function finishJob(
  database: Database,
  clock: Clock,
  jobId: string | null,
  state: "succeeded" | "failed",
  message: string,
  result?: unknown,
): Promise<void> {
  if (jobId === null) return;
  try {
    await logJobStep(database, clock, jobId, {
      level: state === "failed" ? "error" : "info",
      message,
      state,
      ...(result !== undefined ? { result } : {}),
    });
  } catch (err) {
    if (!isLifeboatError(err, "JOB_FINISHED")) throw err;
  }
}

/** A command of `serverId` (404 COMMAND_NOT_FOUND for another server's, as if it did not exist). */
export async function ownCommand(database: Database, serverId: string, id: string): Promise<AgentCommand> {
  const row = await database.db
    .selectFrom("agent_commands")
    .selectAll()
    .where("id", "=", id)
    .executeTakeFirst();
  if (row === undefined || row.server_id !== serverId)
    throw httpError(404, "COMMAND_NOT_FOUND", `no command ${id} for this server`, "fetch commands again");
  return row;
}

export function commandView(r: AgentCommand): CommandView {
  const iso = (ms: number) => new Date(Number(ms)).toISOString();
  return {
    id: r.id,
    serverId: r.server_id,
    kind: r.kind,
    params: JSON.parse(r.params_json) as Record<string, unknown>,
    state: r.state,
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    deadlineAt: iso(r.deadline_at),
    result: r.result_json === null ? null : (JSON.parse(r.result_json) as Record<string, unknown>),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? "" },
    groupPitId: r.group_pit_id,
    jobId: r.job_id,
  };
}
