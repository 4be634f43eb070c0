import type { FastifyInstance } from "fastify";
import { requireOperator } from "../auth.js";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import { getJob, listJobs } from "../jobs.js";

const jobSchema = {
  type: "object",
  required: ["id", "type", "state", "serverIds", "createdAt", "updatedAt"],
  properties: {
    id: { type: "string" },
    type: { type: "string" },
    state: { type: "string" },
    serverIds: { type: "array", items: { type: "string" } },
    params: { type: "object", additionalProperties: true },
    result: {},
    createdAt: { type: "string" },
    createdBy: { type: "string" },
    updatedAt: { type: "string" },
    finishedAt: { type: ["string", "null"] },
    parentJobId: { type: ["string", "null"] },
    terminateRequestedAt: { type: ["string", "null"] },
  },
} as const;
const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;

/** Jobs, read-only for operators of any role (other domains create them, jobs.ts). */
export function jobRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");

  app.get<{ Querystring: { server?: string; state?: string; limit?: number } }>(
    "/api/v1/jobs",
    {
      onRequest: viewer,
      schema: {
        summary: "list jobs, newest first",
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            server: { type: "string", minLength: 1, maxLength: 253 },
            state: { type: "string", minLength: 1, maxLength: 32 },
            limit: { type: "integer", minimum: 1, maximum: 1000 },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["jobs"],
            properties: { jobs: { type: "array", items: jobSchema } },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      const q = request.query;
      let serverId: string | undefined;
      if (q.server !== undefined) {
        const row = await ctx.database.db
          .selectFrom("servers")
          .select("id")
          .where((eb) => eb.or([eb("id", "=", q.server!), eb("name", "=", q.server!)]))
          .executeTakeFirst();
        serverId = row?.id ?? q.server;
      }
      return {
        jobs: await listJobs(ctx.database, {
          ...(serverId !== undefined ? { serverId } : {}),
          ...(q.state !== undefined ? { state: q.state } : {}),
          ...(q.limit !== undefined ? { limit: q.limit } : {}),
        }),
      };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/jobs/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "one job with its step log",
        params: {
          type: "object",
          required: ["id"],
          additionalProperties: false,
          properties: { id: { type: "string", maxLength: 64 } },
        },
        response: {
          200: {
            type: "object",
            required: ["job", "log"],
            properties: {
              job: jobSchema,
              log: {
                type: "array",
                items: {
                  type: "object",
                  required: ["seq", "at", "level", "message"],
                  properties: {
                    seq: { type: "integer" },
                    at: { type: "string" },
                    level: { type: "string" },
                    message: { type: "string" },
                  },
                },
              },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const r = await getJob(ctx.database, request.params.id);
      if (r === undefined)
        throw httpError(
          404,
          "JOB_NOT_FOUND",
          `no job ${request.params.id}`,
          "list jobs with `lifeboat jobs list`",
        );
      return r;
    },
  );
}
