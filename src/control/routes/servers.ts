import type {} from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import { requireClient, requireOperatorOrAgent } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import type { Server } from "../db/index.js";
import { errorSchema, httpError } from "../http-error.js";

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
  inventory: { type: ["object", "null"], additionalProperties: true },
} as const;
const serverSchema = {
  type: "object",
  required: ["id", "name", "state", "online"],
  properties: serverProperties,
} as const;
const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;

interface Heartbeat {
  state: string;
  lagSeconds?: number;
  backlogBytes?: number;
  inventory?: Record<string, unknown>;
}

/**
 * Servers: operators (any role) see all; an agent sees only its own server
 * (another id answers 404, as if it did not exist). Agents report with
 * heartbeats.
 */
export function serverRoutes(app: FastifyInstance, ctx: AppContext): void {
  const readers = requireOperatorOrAgent(ctx.database, ctx.clock, ctx.ca.certPem);
  const agent = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "agent");
  const view = (s: Server) => {
    const lastSeen = s.last_seen_at === null ? null : Number(s.last_seen_at);
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
      replicatorId: s.replicator_id,
      inventory: s.inventory_json === null ? null : (JSON.parse(s.inventory_json) as Record<string, unknown>),
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
      let q = ctx.database.db.selectFrom("servers").selectAll().where("decommissioned_at", "is", null);
      if (request.actor.kind === "client") q = q.where("id", "=", request.actor.subjectId);
      return { servers: (await q.orderBy("name").execute()).map(view) };
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
      const row = await ctx.database.db
        .selectFrom("servers")
        .selectAll()
        .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
        .executeTakeFirst();
      const own = request.actor.kind !== "client" || row?.id === request.actor.subjectId;
      if (row === undefined || !own)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `no server ${key}`,
          "list servers with `lifeboat servers list`",
        );
      return view(row);
    },
  );

  app.post<{ Body: Heartbeat }>(
    "/api/v1/agent/heartbeat",
    {
      onRequest: agent,
      config: { action: "agent.heartbeat" },
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
      const r = await ctx.database.db
        .updateTable("servers")
        .set({
          state: b.state,
          last_seen_at: ctx.clock.now(),
          ...(b.lagSeconds !== undefined ? { lag_seconds: b.lagSeconds } : {}),
          ...(b.backlogBytes !== undefined ? { backlog_bytes: b.backlogBytes } : {}),
          ...(b.inventory !== undefined ? { inventory_json: JSON.stringify(b.inventory) } : {}),
        })
        .where("id", "=", id)
        .where("decommissioned_at", "is", null)
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) === 0)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `server ${id} is not registered`,
          "register the agent again",
        );
      await auditRequest(ctx, request, "agent.heartbeat", `server:${id}`, "ok", { state: b.state });
      return {
        serverId: id,
        heartbeatSeconds: Math.max(1, Math.floor(ctx.config.heartbeatTimeoutSeconds / 4)),
      };
    },
  );
}
