import type {} from "@fastify/rate-limit";
import type { FastifyInstance } from "fastify";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema } from "../http-error.js";
import { type RegisterRequest, registerAgent } from "../register.js";
import { splitSecret } from "../secrets.js";

/**
 * POST /api/v1/register: an agent trades an install token and a CSR for its
 * server id and client certificate. No client certificate needed (it has
 * none yet); rate-limited per address.
 */
export function registerRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.post<{ Body: RegisterRequest }>(
    "/api/v1/register",
    {
      config: {
        action: "agent.register",
        rateLimit: { max: ctx.config.registerRateLimitPerMinute, timeWindow: 60_000 },
      },
      schema: {
        summary: "register an agent with an install token",
        body: {
          type: "object",
          required: ["token", "csr", "hostname"],
          additionalProperties: false,
          properties: {
            token: { type: "string", minLength: 1, maxLength: 256 },
            csr: { type: "string", minLength: 1, maxLength: 16384 },
            hostname: {
              type: "string",
              minLength: 1,
              maxLength: 253,
              pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$",
            },
            inventory: { type: "object", additionalProperties: true },
          },
        },
        response: {
          201: {
            type: "object",
            required: ["serverId", "serverName", "certificatePem", "caPem"],
            properties: {
              serverId: { type: "string" },
              serverName: { type: "string" },
              certificatePem: { type: "string" },
              caPem: { type: "string" },
            },
          },
          400: errorSchema,
          401: errorSchema,
          409: errorSchema,
          429: errorSchema,
        },
      },
    },
    async (request, reply) => {
      const tokenId = splitSecret(request.body.token)?.id;
      request.auditTarget = tokenId ? `token:${tokenId}` : "";
      const r = await registerAgent(ctx.database, ctx.ca, ctx.clock, request.body);
      request.actor = { kind: "client", role: "agent", subjectId: r.serverId, serial: "" };
      await auditRequest(ctx, request, "agent.register", `server:${r.serverId}`, "ok", {
        tokenId: r.tokenId,
        serverName: r.serverName,
        hostname: request.body.hostname,
        retry: !r.created,
      });
      return reply.code(201).send(r);
    },
  );
}
