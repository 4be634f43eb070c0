import type {} from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import { sql } from "kysely";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";

const statusSchema = {
  type: "object",
  required: ["status"],
  properties: { status: { type: "string" } },
} as const;

/** Public: liveness, readiness (the database answers) and the API description. */
export function healthRoutes(app: FastifyInstance, ctx: AppContext): void {
  // `time` (the server's clock, epoch ms) lets `lifeboat doctor` measure a source server's clock skew.
  app.get(
    "/healthz",
    {
      schema: {
        summary: "the process is up; its clock",
        response: {
          200: { ...statusSchema, properties: { ...statusSchema.properties, time: { type: "integer" } } },
        },
      },
    },
    () => ({ status: "ok", time: ctx.clock.now() }),
  );
  app.get(
    "/readyz",
    { schema: { summary: "the database answers", response: { 200: statusSchema, 503: errorSchema } } },
    async () => {
      try {
        await sql`select 1`.execute(ctx.database.db);
      } catch (err) {
        ctx.logger.warn({ err }, "readiness check failed");
        throw httpError(
          503,
          "NOT_READY",
          `the database ${ctx.database.location} does not answer`,
          "check the database server and the server's log",
        );
      }
      return { status: "ready" };
    },
  );
  app.get(
    "/api/v1/openapi.json",
    {
      schema: {
        summary: "this API, as OpenAPI 3",
        response: { 200: { type: "object", additionalProperties: true } },
      },
    },
    () => app.swagger(),
  );
}
