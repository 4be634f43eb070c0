import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { isLifeboatError } from "../../base/index.js";
import { actorName, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { authErrors, idParams } from "./schemas.js";
import { errorSchema, httpError } from "../http-error.js";
import { getJob, jobLogAfter, requestTerminate } from "../jobs.js";
import { createLaunchJob, launchRequestSchema } from "../launch-job.js";
import { cancelFailback } from "../failback.js";
import { failbackDeps } from "./failback.js";

const logLine = {
  type: "object",
  required: ["seq", "at", "level", "message"],
  properties: {
    seq: { type: "integer" },
    at: { type: "string" },
    level: { type: "string" },
    message: { type: "string" },
  },
} as const;
const jobRef = {
  type: "object",
  required: ["job"],
  properties: { job: { type: "object", additionalProperties: true } },
} as const;

/** The JSON schema of a zod schema, for fastify's validation and the OpenAPI document. */
export function jsonSchemaOf(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { target: "draft-7", io: "input" }) as Record<
    string,
    unknown
  >;
  return rest;
}

/**
 * Launches (drills and recoveries) and what operators do with jobs: create
 * one (operator; `out` needs an admin), follow its log, terminate it.
 */
export function launchRoutes(app: FastifyInstance, ctx: AppContext): void {
  const operator = requireOperator(ctx.database, ctx.clock, "operator");
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");

  app.post<{ Body: unknown }>(
    "/api/v1/launches",
    {
      onRequest: operator,
      config: { action: "launch.create" },
      schema: {
        summary: "launch servers from a PIT: a drill (default) or a recovery; returns the job",
        body: jsonSchemaOf(launchRequestSchema),
        response: { 201: jobRef, 400: errorSchema, ...authErrors },
      },
    },
    async (request, reply) => {
      const body = launchRequestSchema.parse(request.body);
      request.auditTarget = `servers:${body.servers.join(",")}`;
      const actor = request.actor;
      const job = await createLaunchJob(ctx.database, ctx.clock, body, {
        name: actorName(actor),
        admin: actor.kind === "apikey" && actor.role === "admin",
      });
      ctx.jobs?.poke();
      await auditRequest(ctx, request, `launch.${body.mode}`, `job:${job.id}`, "ok", {
        servers: job.serverIds,
        params: job.params,
      });
      return reply.code(201).send({ job });
    },
  );

  app.get<{ Params: { id: string }; Querystring: { after?: string; waitSeconds?: string } }>(
    "/api/v1/jobs/:id/log",
    {
      onRequest: viewer,
      schema: {
        summary: "a job's log lines after `after`; waits up to waitSeconds for new ones (follow)",
        params: idParams,
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            after: { type: "string", pattern: "^[0-9]{1,12}$" },
            waitSeconds: { type: "string", pattern: "^([0-9]|[1-5][0-9]|60)$" },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["state", "log"],
            properties: { state: { type: "string" }, log: { type: "array", items: logLine } },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request) => {
      const id = request.params.id;
      const after = Number(request.query.after ?? 0);
      const deadline = Date.now() + Number(request.query.waitSeconds ?? 0) * 1000;
      for (;;) {
        const found = await getJob(ctx.database, id);
        if (!found)
          throw httpError(404, "JOB_NOT_FOUND", `no job ${id}`, "list jobs with `lifeboat jobs list`");
        const log = await jobLogAfter(ctx.database, id, after);
        const finished = ["succeeded", "failed", "terminated"].includes(found.job.state);
        if (log.length > 0 || finished || Date.now() >= deadline) return { state: found.job.state, log };
        await new Promise((r) => setTimeout(r, 250));
      }
    },
  );

  app.post<{ Params: { id: string } }>(
    "/api/v1/jobs/:id/terminate",
    {
      onRequest: operator,
      config: { action: "job.terminate" },
      schema: {
        summary: "stop a job; for a drill, also remove what it made; for a failback, cancel it",
        params: idParams,
        body: { type: ["object", "null"], additionalProperties: false, properties: {} },
        response: { 202: jobRef, 409: errorSchema, ...authErrors },
      },
    },
    async (request, reply) => {
      request.auditTarget = `job:${request.params.id}`;
      const found = await getJob(ctx.database, request.params.id);
      if (
        found?.job.type === "failback" &&
        (found.job.state === "pending" || found.job.state === "running")
      ) {
        // A failback runs on its agents, not in a job runner: terminate is its cancel.
        await cancelFailback(failbackDeps(ctx), request.params.id);
        await auditRequest(ctx, request, "job.terminate", `job:${request.params.id}`, "ok");
        return reply.code(202).send({ job: (await getJob(ctx.database, request.params.id))!.job });
      }
      const job = await requestTerminate(ctx.database, ctx.clock, request.params.id).catch((err: unknown) => {
        if (isLifeboatError(err))
          throw httpError(err.code === "JOB_NOT_FOUND" ? 404 : 409, err.code, err.message, err.hint);
        throw err;
      });
      ctx.jobs?.poke();
      await auditRequest(ctx, request, "job.terminate", `job:${job.id}`, "ok");
      return reply.code(202).send({ job });
    },
  );
}
