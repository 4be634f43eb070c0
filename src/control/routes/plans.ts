import type { FastifyInstance } from "fastify";
import { actorName, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { anyObject, authErrors, idParams } from "./schemas.js";
import { errorSchema } from "../http-error.js";
import { listJobs } from "../jobs.js";
import { createPlan, findPlan, listPlans, planRunSchema, planSchema, planView, runPlan } from "../plans.js";
import { jsonSchemaOf } from "./launches.js";

/** Recovery plans (plans.ts): saved by operators, shown to any role, run as a job. */
export function planRoutes(app: FastifyInstance, ctx: AppContext): void {
  const operator = requireOperator(ctx.database, ctx.clock, "operator");
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");

  app.post<{ Body: unknown }>(
    "/api/v1/plans",
    {
      onRequest: operator,
      config: { action: "plan.create" },
      schema: {
        summary: "save a recovery plan: servers in waves, launched in order",
        body: jsonSchemaOf(planSchema),
        response: {
          201: { type: "object", required: ["plan"], properties: { plan: anyObject } },
          400: errorSchema,
          409: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      const input = planSchema.parse(request.body);
      request.auditTarget = `plan:${input.name}`;
      const plan = await createPlan(ctx.database, ctx.clock, input, actorName(request.actor));
      await auditRequest(ctx, request, "plan.create", `plan:${plan.id}`, "ok", { name: plan.name });
      return reply.code(201).send({ plan });
    },
  );

  app.get(
    "/api/v1/plans",
    {
      onRequest: viewer,
      schema: {
        summary: "list recovery plans",
        response: {
          200: {
            type: "object",
            required: ["plans"],
            properties: { plans: { type: "array", items: anyObject } },
          },
          ...authErrors,
        },
      },
    },
    async () => ({ plans: await listPlans(ctx.database) }),
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/plans/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "one plan (by id or name) and its recent runs",
        params: idParams,
        response: {
          200: {
            type: "object",
            required: ["plan", "runs"],
            properties: { plan: anyObject, runs: { type: "array", items: anyObject } },
          },
          ...authErrors,
        },
      },
    },
    async (request) => {
      const row = await findPlan(ctx.database, request.params.id);
      const runs = (await listJobs(ctx.database, { limit: 1000 })).filter(
        (j) => j.type === "plan" && j.params.planId === row.id,
      );
      return { plan: await planView(ctx.database, row), runs: runs.slice(0, 20) };
    },
  );

  app.post<{ Params: { id: string }; Body: unknown }>(
    "/api/v1/plans/:id/run",
    {
      onRequest: operator,
      config: { action: "plan.run" },
      schema: {
        summary: "run a plan: its waves in order, at one point in time; returns the plan's job",
        params: idParams,
        body: jsonSchemaOf(planRunSchema),
        response: {
          201: { type: "object", required: ["job"], properties: { job: anyObject } },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      request.auditTarget = `plan:${request.params.id}`;
      const row = await findPlan(ctx.database, request.params.id);
      const job = await runPlan(
        ctx.database,
        ctx.clock,
        row,
        planRunSchema.parse(request.body ?? {}),
        actorName(request.actor),
      );
      ctx.jobs?.poke();
      await auditRequest(ctx, request, "plan.run", `plan:${row.id}`, "ok", {
        jobId: job.id,
        mode: job.params.mode,
      });
      return reply.code(201).send({ job });
    },
  );
}
