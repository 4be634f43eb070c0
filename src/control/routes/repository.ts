import type { FastifyInstance } from "fastify";
import { actorName, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema } from "../http-error.js";
import { repositoryStatus, requestVerify } from "../repository-checks.js";
import { anyObject, authErrors } from "./schemas.js";

/**
 * The repository as the control plane last saw it (GET, any key) and an
 * on-demand verify (POST, operator): a job of type "verify" whose damage
 * findings become a `repository.damaged` event.
 */
export function repositoryRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const operator = requireOperator(ctx.database, ctx.clock, "operator");

  app.get(
    "/api/v1/repository",
    {
      onRequest: viewer,
      schema: {
        summary: "the repository's size at the last stats refresh and the last verify's result",
        response: {
          200: {
            type: "object",
            required: ["stats", "verify"],
            properties: {
              stats: { anyOf: [anyObject, { type: "null" }] },
              verify: { anyOf: [anyObject, { type: "null" }] },
            },
          },
          ...authErrors,
        },
      },
    },
    async () => repositoryStatus(ctx.database),
  );

  app.post<{ Body: { readData?: boolean } }>(
    "/api/v1/repository/verify",
    {
      onRequest: operator,
      config: { action: "repository.verify" },
      schema: {
        summary: "verify the repository now (a job; the one pending or running if there is one)",
        body: {
          type: "object",
          additionalProperties: false,
          properties: { readData: { type: "boolean", default: false } },
        },
        response: {
          202: {
            type: "object",
            required: ["job", "created"],
            properties: { job: anyObject, created: { type: "boolean" } },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      const r = await requestVerify(ctx.database, ctx.clock, {
        readData: request.body?.readData === true,
        createdBy: actorName(request.actor),
      });
      ctx.jobs?.poke();
      await auditRequest(ctx, request, "repository.verify", `job:${r.job.id}`, "ok", {
        readData: request.body?.readData === true,
        created: r.created,
      });
      return reply.code(202).send(r);
    },
  );
}
