import type { FastifyRequest } from "fastify";
import type { Clock, Logger } from "../base/index.js";
import type { CaCredentials } from "../net/index.js";
import type { Repository } from "../store/index.js";
import { type AuditResult, appendAudit } from "./audit.js";
import { actorName } from "./auth.js";
import type { ControlConfig } from "./config.js";
import type { Database } from "./db/index.js";

/** What every route module gets. */
export interface AppContext {
  database: Database;
  config: ControlConfig;
  ca: CaCredentials;
  clock: Clock;
  logger: Logger;
  /** The repository, opened on first use (absent in route tests that need none). */
  repo?: () => Promise<Repository>;
  /** The job runner of this instance, told when a job was created here (absent in route tests). */
  jobs?: { poke(): void };
}

/**
 * Writes the audit record of a state-changing request: who (the actor the
 * auth hook found), what, on what, from which address, with which result.
 * `details` must already be free of secrets (appendAudit redacts again).
 */
declare module "fastify" {
  interface FastifyRequest {
    /** Set once the route wrote its own audit record. */
    audited?: boolean;
    /** What a failed request was about, for the audit record the app writes then. */
    auditTarget?: string;
  }
  interface FastifyContextConfig {
    /** The audit action of a state-changing route ("token.create"). */
    action?: string;
  }
}

export async function auditRequest(
  ctx: AppContext,
  request: FastifyRequest,
  action: string,
  target: string,
  result: AuditResult,
  details: Record<string, unknown> = {},
): Promise<void> {
  request.audited = true;
  await appendAudit(
    ctx.database,
    { actor: actorName(request.actor), action, target, source: request.ip, result, details },
    ctx.clock,
  );
}
