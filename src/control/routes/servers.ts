import { agentMode } from "../failback-passes.js";
import type {} from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import { requireClient, requireOperator, requireOperatorOrClient } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import type { Server } from "../db/index.js";
import { type HeartbeatReport, recordHeartbeat } from "../heartbeats.js";
import { errorSchema, httpError } from "../http-error.js";
import { bootProfiles, readinessOf } from "../readiness.js";
import { assignments, decommission } from "../replicators.js";
import { effectiveSettings } from "../settings.js";
import { decommissionRoute } from "./decommission.js";
import { purgeRoute } from "./purge.js";

const serverProperties = {
  id: { type: "string" },
  name: { type: "string" },
  hostname: { type: ["string", "null"] },
  state: { type: "string" },
  online: { type: "boolean" },
  lagSeconds: { type: ["number", "null"] },
  backlogBytes: { type: ["number", "null"] },
  lastSeenAt: { type: ["string", "null"] },
  registeredAt: { type: "string" },
  replicatorId: { type: ["string", "null"] },
  group: { type: ["string", "null"] },
  inventory: { type: ["object", "null"], additionalProperties: true },
  /** docs/launch-readiness.md, "Readiness before disaster". */
  readiness: {
    type: ["object", "null"],
    required: ["profile", "ready", "verdict", "problems", "checkedAt", "source"],
    properties: {
      profile: { type: "string" },
      ready: { type: "boolean" },
      verdict: { type: "string" },
      problems: {
        type: "array",
        items: {
          type: "object",
          required: ["code", "severity", "message", "remedy"],
          properties: {
            code: { type: "string" },
            severity: { type: "string", enum: ["error", "warning"] },
            message: { type: "string" },
            remedy: { type: "string" },
          },
        },
      },
      checkedAt: { type: "string" },
      source: { type: "string", enum: ["agent"] },
    },
  },
} as const;
const serverSchema = {
  type: "object",
  required: ["id", "name", "state", "online"],
  properties: serverProperties,
} as const;
const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;

const notFound = (key: string) =>
  httpError(404, "SERVER_NOT_FOUND", `no server ${key}`, "list servers with `lifeboat servers list`");

/**
 * Servers: operators (any role) see all; an agent sees only its own server, a
 * replicator only the servers assigned to it (any other id answers 404, as if
 * it did not exist). Agents report with heartbeats; admins decommission, and
 * an agent may decommission its own server (`agent uninstall`).
 */
export function serverRoutes(app: FastifyInstance, ctx: AppContext): void {
  const readers = requireOperatorOrClient(ctx.database, ctx.clock, ctx.ca.certPem, ["agent", "replicator"]);
  const agent = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "agent");
  const admin = requireOperator(ctx.database, ctx.clock, "admin");
  const view = (s: Server, replicatorId: string | null, bootProfile: string) => {
    const lastSeen = s.last_seen_at === null ? null : Number(s.last_seen_at);
    const inventory =
      s.inventory_json === null ? null : (JSON.parse(s.inventory_json) as Record<string, unknown>);
    return {
      id: s.id,
      name: s.name,
      hostname: s.hostname,
      state: s.state,
      online: lastSeen !== null && ctx.clock.now() - lastSeen <= ctx.config.heartbeatTimeoutSeconds * 1000,
      lagSeconds: s.lag_seconds === null ? null : Number(s.lag_seconds),
      backlogBytes: s.backlog_bytes === null ? null : Number(s.backlog_bytes),
      lastSeenAt: lastSeen === null ? null : new Date(lastSeen).toISOString(),
      registeredAt: new Date(Number(s.registered_at)).toISOString(),
      replicatorId,
      group: s.group_name ?? null,
      inventory,
      readiness: readinessOf(inventory, bootProfile),
    };
  };

  app.get(
    "/api/v1/servers",
    {
      onRequest: readers,
      schema: {
        summary: "list servers (an agent sees only its own)",
        response: {
          200: {
            type: "object",
            required: ["servers"],
            properties: { servers: { type: "array", items: serverSchema } },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const actor = request.actor;
      const assigned = await assignments(ctx.database);
      let q = ctx.database.db.selectFrom("servers").selectAll().where("decommissioned_at", "is", null);
      if (actor.kind === "client" && actor.role === "agent") q = q.where("id", "=", actor.subjectId);
      let rows = await q.orderBy("name").execute();
      if (actor.kind === "client" && actor.role === "replicator")
        rows = rows.filter((r) => assigned.get(r.id) === actor.subjectId);
      const profiles = await bootProfiles(
        ctx.database,
        rows.map((r) => r.id),
      );
      return { servers: rows.map((r) => view(r, assigned.get(r.id) ?? null, profiles.get(r.id)!)) };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/servers/:id",
    {
      onRequest: readers,
      schema: {
        summary: "one server, by id or name",
        params: {
          type: "object",
          required: ["id"],
          additionalProperties: false,
          properties: { id: { type: "string", maxLength: 253 } },
        },
        response: { 200: serverSchema, ...errors },
      },
    },
    async (request) => {
      const key = request.params.id;
      const actor = request.actor;
      const row = await ctx.database.db
        .selectFrom("servers")
        .selectAll()
        .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
        .executeTakeFirst();
      if (row === undefined) throw notFound(key);
      const replicatorId = (await assignments(ctx.database)).get(row.id) ?? null;
      const visible =
        actor.kind !== "client" ||
        (actor.role === "agent" ? row.id === actor.subjectId : replicatorId === actor.subjectId);
      if (!visible) throw notFound(key);
      const profiles = await bootProfiles(ctx.database, [row.id]);
      return view(row, replicatorId, profiles.get(row.id)!);
    },
  );

  decommissionRoute(app, ctx, "server", {
    admin,
    summary: "decommission a server: revoke its certificates, stop accepting its agent",
    notFound,
  });
  purgeRoute(app, ctx, admin, notFound);

  app.get(
    "/api/v1/agent/settings",
    {
      onRequest: agent,
      config: { action: "agent.settings" },
      logLevel: "warn",
      schema: {
        summary:
          "the calling agent's effective replication settings (it polls them and applies changes live)",
        response: {
          200: {
            type: "object",
            required: ["serverId", "replication", "dataAddress"],
            properties: {
              serverId: { type: "string" },
              dataAddress: { type: ["string", "null"] },
              replication: { type: "object", additionalProperties: true },
              mode: { type: "object", additionalProperties: true },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "agent route", "");
      const id = request.actor.subjectId;
      request.audited = true; // a read, polled: not audited
      const { settings } = await effectiveSettings(ctx.database, id, "replication");
      // A server assigned to a separate replicator sends its data there; otherwise to this port.
      const replicatorId = (await assignments(ctx.database)).get(id) ?? null;
      const rep = replicatorId
        ? await ctx.database.db
            .selectFrom("replicators")
            .select("address")
            .where("id", "=", replicatorId)
            .where("decommissioned_at", "is", null)
            .executeTakeFirst()
        : undefined;
      // A fenced server's agent does not replicate; a failback target receives (failback.ts).
      const mode = await agentMode(ctx.database, id);
      return {
        serverId: id,
        replication: settings,
        dataAddress: mode.mode === "replicate" ? (rep?.address ?? null) : null,
        mode,
      };
    },
  );

  app.post<{ Body: HeartbeatReport }>(
    "/api/v1/agent/heartbeat",
    {
      onRequest: agent,
      config: { action: "agent.heartbeat" },
      // Hundreds a second: no access-log lines for them (refusals are in the audit log).
      logLevel: "warn",
      schema: {
        summary: "an agent reports its state",
        body: {
          type: "object",
          required: ["state"],
          additionalProperties: false,
          properties: {
            state: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Z][A-Z0-9_]*$" },
            lagSeconds: { type: "number", minimum: 0 },
            backlogBytes: { type: "integer", minimum: 0 },
            inventory: { type: "object", additionalProperties: true },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["serverId", "heartbeatSeconds"],
            properties: { serverId: { type: "string" }, heartbeatSeconds: { type: "integer" } },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "agent route", "");
      const id = request.actor.subjectId;
      const b = request.body;
      const outcome = await recordHeartbeat(ctx.database, ctx.clock, id, b);
      if (!outcome.found)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `server ${id} is not registered`,
          "register the agent again",
        );
      // Only a change of state is audited (heartbeats.ts says why).
      if (outcome.previousState !== undefined)
        await auditRequest(ctx, request, "agent.heartbeat", `server:${id}`, "ok", {
          from: outcome.previousState,
          to: b.state,
        });
      else request.audited = true;
      return {
        serverId: id,
        heartbeatSeconds: Math.max(1, Math.floor(ctx.config.heartbeatTimeoutSeconds / 4)),
      };
    },
  );

  app.post(
    "/api/v1/agent/deregister",
    {
      onRequest: agent,
      config: { action: "agent.deregister" },
      schema: {
        summary: "an agent decommissions its own server (agent uninstall); its PITs stay",
        body: { type: "object", additionalProperties: false, properties: {} },
        response: {
          200: {
            type: "object",
            required: ["serverId", "state"],
            properties: { serverId: { type: "string" }, state: { type: "string" } },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "agent route", "");
      const id = request.actor.subjectId;
      request.auditTarget = `server:${id}`;
      // The same transaction as an admin's decommission: the row, every certificate, an event.
      const r = await decommission(ctx.database, ctx.clock, "server", id);
      if (r === undefined)
        throw httpError(404, "SERVER_NOT_FOUND", `server ${id} is not registered`, "nothing to deregister");
      await auditRequest(ctx, request, "agent.deregister", `server:${r.id}`, "ok", {
        name: r.name,
        revokedCertificates: r.revoked,
      });
      return { serverId: r.id, state: "DECOMMISSIONED" };
    },
  );
}
