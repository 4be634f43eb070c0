import type { FastifyInstance } from "fastify";
import type { requireOperator } from "../auth.js";
import { idParams } from "./schemas.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, type HttpError } from "../http-error.js";
import { decommission } from "../replicators.js";

/**
 * POST /api/v1/{servers|replicators}/:id/decommission (admins): revokes
 * every certificate of the server or replicator in one transaction, so each
 * is refused at its next connection, and records it in the audit log.
 */
export function decommissionRoute(
  app: FastifyInstance,
  ctx: AppContext,
  kind: "server" | "replicator",
  opts: {
    admin: ReturnType<typeof requireOperator>;
    summary: string;
    notFound: (key: string) => HttpError;
  },
): void {
  app.post<{ Params: { id: string } }>(
    `/api/v1/${kind}s/:id/decommission`,
    {
      onRequest: opts.admin,
      config: { action: `${kind}.decommission` },
      schema: {
        summary: opts.summary,
        params: idParams,
        body: { type: "object", additionalProperties: false, properties: {} },
        response: {
          200: {
            type: "object",
            required: ["id", "name", "revokedCertificates"],
            properties: {
              id: { type: "string" },
              name: { type: "string" },
              revokedCertificates: { type: "integer" },
            },
          },
          401: errorSchema,
          403: errorSchema,
          404: errorSchema,
        },
      },
    },
    async (request) => {
      request.auditTarget = `${kind}:${request.params.id}`;
      const r = await decommission(ctx.database, ctx.clock, kind, request.params.id);
      if (r === undefined) throw opts.notFound(request.params.id);
      await auditRequest(ctx, request, `${kind}.decommission`, `${kind}:${r.id}`, "ok", {
        name: r.name,
        revokedCertificates: r.revoked,
      });
      return { id: r.id, name: r.name, revokedCertificates: r.revoked };
    },
  );
}
