import type { FastifyInstance } from "fastify";
import { requireOperator } from "../auth.js";
import type { AppContext } from "../context.js";
import { errorSchema } from "../http-error.js";

const pitSchema = {
  type: "object",
  required: ["id", "repositoryId", "serverName", "seq", "time", "consistency", "disks"],
  properties: {
    id: { type: "string" },
    repositoryId: { type: "string" },
    serverId: { type: ["string", "null"] },
    serverName: { type: "string" },
    seq: { type: "integer" },
    time: { type: "string" },
    consistency: { type: "string" },
    disks: { type: "array", items: { type: "object", additionalProperties: true } },
    labels: { type: "object", additionalProperties: true },
  },
} as const;

/**
 * GET /api/v1/pits?server=: the PIT catalog in the control database (kept by
 * the replicator, rebuilt by `lifeboat store reindex --db`), oldest first.
 * `server` matches a server id or the name the PIT was taken under.
 */
export function pitRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  app.get<{ Querystring: { server?: string; limit?: number } }>(
    "/api/v1/pits",
    {
      onRequest: viewer,
      schema: {
        summary: "list PITs from the catalog",
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            server: { type: "string", minLength: 1, maxLength: 253 },
            limit: { type: "integer", minimum: 1, maximum: 10000 },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["pits"],
            properties: { pits: { type: "array", items: pitSchema } },
          },
          400: errorSchema,
          401: errorSchema,
          403: errorSchema,
        },
      },
    },
    async (request) => {
      const { server, limit } = request.query;
      let q = ctx.database.db.selectFrom("pits").selectAll().orderBy("time_ms").orderBy("seq").orderBy("id");
      if (server !== undefined)
        q = q.where((eb) => eb.or([eb("server_id", "=", server), eb("server_name", "=", server)]));
      const rows = await q.limit(limit ?? 10000).execute();
      return {
        pits: rows.map((p) => ({
          id: p.id,
          repositoryId: p.repository_id,
          serverId: p.server_id,
          serverName: p.server_name,
          seq: Number(p.seq),
          time: new Date(Number(p.time_ms)).toISOString(),
          consistency: p.consistency,
          disks: JSON.parse(p.disks_json) as object[],
          labels: JSON.parse(p.labels_json) as object,
        })),
      };
    },
  );
}
