import type { FastifyInstance } from "fastify";
import { requireClient, requireOperatorOrClient } from "../auth.js";
import { renewClientCertificate, revokedSerials } from "../certificates.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";

/**
 * POST /api/v1/renew: an agent or replicator trades its current, valid
 * certificate (mutual TLS) and a new CSR for a fresh certificate of the same
 * identity. GET /api/v1/revocations: the serials revoked and not yet
 * expired, for replicators (and operators) to refuse decommissioned agents.
 */
export function certificateRoutes(app: FastifyInstance, ctx: AppContext): void {
  const client = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, ["agent", "replicator"]);
  const readers = requireOperatorOrClient(ctx.database, ctx.clock, ctx.ca.certPem, ["replicator"]);

  app.post<{ Body: { csr: string } }>(
    "/api/v1/renew",
    {
      onRequest: client,
      config: { action: "certificate.renew" },
      schema: {
        summary: "renew the caller's client certificate before it expires",
        body: {
          type: "object",
          required: ["csr"],
          additionalProperties: false,
          properties: { csr: { type: "string", minLength: 1, maxLength: 16384 } },
        },
        response: {
          200: {
            type: "object",
            required: ["certificatePem", "caPem", "serial", "notAfter"],
            properties: {
              certificatePem: { type: "string" },
              caPem: { type: "string" },
              serial: { type: "string" },
              notAfter: { type: "string" },
            },
          },
          400: errorSchema,
          401: errorSchema,
          403: errorSchema,
        },
      },
    },
    async (request) => {
      const actor = request.actor;
      if (actor.kind !== "client") throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "client route");
      const target = `${actor.role === "agent" ? "server" : "replicator"}:${actor.subjectId}`;
      request.auditTarget = target;
      const r = await renewClientCertificate(ctx.database, ctx.ca, ctx.clock, actor, request.body.csr);
      await auditRequest(ctx, request, "certificate.renew", target, "ok", {
        previousSerial: actor.serial,
        serial: r.serial,
        notAfter: r.notAfter,
      });
      return r;
    },
  );

  app.get(
    "/api/v1/revocations",
    {
      onRequest: readers,
      schema: {
        summary: "serials of revoked client certificates that have not expired yet",
        response: {
          200: {
            type: "object",
            required: ["serials", "generatedAt"],
            properties: {
              serials: { type: "array", items: { type: "string" } },
              generatedAt: { type: "string" },
            },
          },
          401: errorSchema,
          403: errorSchema,
        },
      },
    },
    async () => ({
      serials: await revokedSerials(ctx.database, ctx.clock),
      generatedAt: new Date(ctx.clock.now()).toISOString(),
    }),
  );
}
