import type { FastifyInstance } from "fastify";
import { API_KEY_ROLES, createApiKey, listApiKeys, revokeApiKey } from "../api-keys.js";
import { actorName, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import type { ApiKeyRole } from "../db/index.js";
import { errorSchema } from "../http-error.js";
import { authErrors } from "./schemas.js";

const keyProperties = {
  id: { type: "string" },
  name: { type: "string" },
  role: { type: "string", enum: [...API_KEY_ROLES] },
  createdAt: { type: "string", format: "date-time" },
  createdBy: { type: ["string", "null"] },
  lastUsedAt: { type: ["string", "null"] },
  revokedAt: { type: ["string", "null"] },
} as const;
const keySchema = {
  type: "object",
  required: Object.keys(keyProperties),
  properties: keyProperties,
} as const;
const keyIdParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", minLength: 1, maxLength: 64 } },
} as const;

/**
 * Operator API keys (admin only): create (the key is in the answer, once),
 * list (never a secret), revoke. Creating and revoking are audited.
 */
export function apiKeyRoutes(app: FastifyInstance, ctx: AppContext): void {
  const admin = requireOperator(ctx.database, ctx.clock, "admin");

  app.post<{ Body: { name: string; role: ApiKeyRole } }>(
    "/api/v1/api-keys",
    {
      onRequest: admin,
      config: { action: "apikey.create" },
      schema: {
        summary: "create an API key (viewer, operator or admin); the key is shown once",
        body: {
          type: "object",
          required: ["name", "role"],
          additionalProperties: false,
          properties: {
            name: { type: "string", minLength: 1, maxLength: 100, pattern: "^[^\\u0000-\\u001f]+$" },
            role: { type: "string", enum: [...API_KEY_ROLES] },
          },
        },
        response: {
          201: {
            type: "object",
            required: [...keySchema.required, "key"],
            properties: { ...keyProperties, key: { type: "string" } },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      const made = await createApiKey(ctx.database, ctx.clock, {
        name: request.body.name,
        role: request.body.role,
        createdBy: actorName(request.actor),
      });
      const { key: _secret, ...shown } = made;
      await auditRequest(ctx, request, "apikey.create", `apikey:${made.id}`, "ok", {
        name: shown.name,
        role: shown.role,
      });
      return reply.code(201).send(made);
    },
  );

  app.get(
    "/api/v1/api-keys",
    {
      onRequest: admin,
      schema: {
        summary: "list API keys (never their secrets)",
        response: {
          200: {
            type: "object",
            required: ["keys"],
            properties: { keys: { type: "array", items: keySchema } },
          },
          ...authErrors,
        },
      },
    },
    async () => ({ keys: await listApiKeys(ctx.database) }),
  );

  app.delete<{ Params: { id: string } }>(
    "/api/v1/api-keys/:id",
    {
      onRequest: admin,
      config: { action: "apikey.revoke" },
      schema: {
        summary: "revoke an API key (and end the console sessions signed in with it)",
        params: keyIdParams,
        response: { 200: keySchema, 409: errorSchema, ...authErrors },
      },
    },
    async (request) => {
      request.auditTarget = `apikey:${request.params.id}`;
      const revoked = await revokeApiKey(ctx.database, ctx.clock, request.params.id);
      await auditRequest(ctx, request, "apikey.revoke", `apikey:${revoked.id}`, "ok", {
        name: revoked.name,
        role: revoked.role,
      });
      return revoked;
    },
  );
}
