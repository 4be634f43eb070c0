import type {} from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import type { InstallTokenRole } from "../db/index.js";
import { requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema } from "../http-error.js";
import { TOKEN_MAX_TTL_SECONDS, createToken, listTokens, revokeToken } from "../tokens.js";

const tokenProperties = {
  id: { type: "string" },
  role: { type: "string", enum: ["agent", "replicator"] },
  usesAllowed: { type: "integer" },
  usesCount: { type: "integer" },
  expiresAt: { type: "string", format: "date-time" },
  serverName: { type: ["string", "null"] },
  recoveryOf: { type: ["string", "null"] },
  createdBy: { type: "string" },
  createdAt: { type: "string", format: "date-time" },
  revokedAt: { type: ["string", "null"] },
} as const;
const tokenSchema = {
  type: "object",
  required: Object.keys(tokenProperties),
  properties: tokenProperties,
} as const;
const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;
const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", maxLength: 64 } },
} as const;

interface CreateBody {
  role: InstallTokenRole;
  uses?: number;
  ttlSeconds?: number;
  serverName?: string;
  recoveryOf?: string;
}

/** Install tokens (admin only): create (the secret is shown once), list, revoke. */
export function tokenRoutes(app: FastifyInstance, ctx: AppContext): void {
  const admin = requireOperator(ctx.database, ctx.clock, "admin");
  app.post<{ Body: CreateBody }>(
    "/api/v1/tokens",
    {
      onRequest: admin,
      config: { action: "token.create" },
      schema: {
        summary: "create an install token",
        body: {
          type: "object",
          required: ["role"],
          additionalProperties: false,
          properties: {
            role: { type: "string", enum: ["agent", "replicator"] },
            uses: { type: "integer", minimum: 1, maximum: 10000, default: 1 },
            ttlSeconds: { type: "integer", minimum: 1, maximum: TOKEN_MAX_TTL_SECONDS, default: 3600 },
            serverName: {
              type: "string",
              minLength: 1,
              maxLength: 253,
              pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$",
            },
            recoveryOf: { type: "string", minLength: 1, maxLength: 64 },
          },
        },
        response: {
          201: {
            type: "object",
            required: [...tokenSchema.required, "token"],
            properties: { ...tokenProperties, token: { type: "string" } },
          },
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const b = request.body;
      const made = await createToken(ctx.database, ctx.clock, {
        role: b.role,
        ...(b.uses !== undefined ? { uses: b.uses } : {}),
        ...(b.ttlSeconds !== undefined ? { ttlSeconds: b.ttlSeconds } : {}),
        ...(b.serverName !== undefined ? { serverName: b.serverName } : {}),
        ...(b.recoveryOf !== undefined ? { recoveryOf: b.recoveryOf } : {}),
        createdBy: `apikey:${request.actor.kind === "apikey" ? request.actor.id : "?"}`,
      });
      const { token: _secret, ...view } = made;
      await auditRequest(ctx, request, "token.create", `token:${made.id}`, "ok", { ...view });
      return reply.code(201).send(made);
    },
  );
  app.get(
    "/api/v1/tokens",
    {
      onRequest: admin,
      schema: {
        summary: "list install tokens (never their secrets)",
        response: {
          200: {
            type: "object",
            required: ["tokens"],
            properties: { tokens: { type: "array", items: tokenSchema } },
          },
          ...errors,
        },
      },
    },
    async () => ({ tokens: await listTokens(ctx.database) }),
  );
  app.delete<{ Params: { id: string } }>(
    "/api/v1/tokens/:id",
    {
      onRequest: admin,
      config: { action: "token.revoke" },
      schema: {
        summary: "revoke an install token",
        params: idParams,
        response: { 200: tokenSchema, ...errors },
      },
    },
    async (request) => {
      request.auditTarget = `token:${request.params.id}`;
      const view = await revokeToken(ctx.database, ctx.clock, request.params.id);
      await auditRequest(ctx, request, "token.revoke", `token:${view.id}`, "ok");
      return view;
    },
  );
}
