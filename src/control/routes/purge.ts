import type { FastifyInstance } from "fastify";
import type { requireOperator } from "../auth.js";
import { idParams } from "./schemas.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, type HttpError, httpError } from "../http-error.js";
import { purgeServer } from "../purge.js";

/**
 * POST /api/v1/servers/:id/purge (admins): forgets every PIT of a
 * decommissioned server, its replica head and its catalog rows (purge.ts);
 * the space is freed at the next `store gc`. Audited, refused or not.
 */
export function purgeRoute(
  app: FastifyInstance,
  ctx: AppContext,
  admin: ReturnType<typeof requireOperator>,
  notFound: (key: string) => HttpError,
): void {
  app.post<{ Params: { id: string } }>(
    "/api/v1/servers/:id/purge",
    {
      onRequest: admin,
      config: { action: "server.purge" },
      schema: {
        summary:
          "purge a decommissioned server: forget its PITs, head and catalog rows (space freed at the next store gc)",
        params: idParams,
        body: { type: "object", additionalProperties: false, properties: {} },
        response: {
          200: {
            type: "object",
            required: ["id", "name", "pitsForgotten", "catalogRows"],
            properties: {
              id: { type: "string" },
              name: { type: "string" },
              pitsForgotten: { type: "integer" },
              catalogRows: { type: "integer" },
            },
          },
          401: errorSchema,
          403: errorSchema,
          404: errorSchema,
          409: errorSchema,
          503: errorSchema,
        },
      },
    },
    async (request) => {
      request.auditTarget = `server:${request.params.id}`;
      if (!ctx.repo)
        throw httpError(
          503,
          "STORE_UNAVAILABLE",
          "this control plane has no repository",
          "start it with one",
        );
      const r = await purgeServer(ctx.database, ctx.clock, await ctx.repo(), request.params.id);
      if (r === undefined) throw notFound(request.params.id);
      await auditRequest(ctx, request, "server.purge", `server:${r.id}`, "ok", {
        name: r.name,
        pitsForgotten: r.pitsForgotten,
        catalogRows: r.catalogRows,
      });
      return r;
    },
  );
}
