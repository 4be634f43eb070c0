import type { FastifyInstance } from "fastify";
import { actorName, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import { createWebhook, deleteWebhook, listWebhooks, safeUrl } from "../webhooks.js";
import { authErrors } from "./schemas.js";

const webhookProperties = {
  id: { type: "string" },
  url: { type: "string" },
  events: { type: "array", items: { type: "string" } },
  customCa: { type: "boolean" },
  createdAt: { type: "string", format: "date-time" },
  createdBy: { type: "string" },
  cursorSeq: { type: "integer" },
  failures: { type: "integer" },
  nextAttemptAt: { type: "string", format: "date-time" },
  lastDeliveredAt: { type: ["string", "null"] },
  lastError: { type: ["string", "null"] },
} as const;
const webhookSchema = {
  type: "object",
  required: Object.keys(webhookProperties),
  properties: webhookProperties,
} as const;

interface CreateBody {
  url: string;
  events?: string[];
  caPem?: string;
}

/**
 * Webhooks (admin only): create (the signing secret is in the answer, once),
 * list (never the secret), delete. Delivery runs in the background
 * (webhook-delivery.ts).
 */
export function webhookRoutes(app: FastifyInstance, ctx: AppContext): void {
  const admin = requireOperator(ctx.database, ctx.clock, "admin");

  app.post<{ Body: CreateBody }>(
    "/api/v1/webhooks",
    {
      onRequest: admin,
      config: { action: "webhook.create" },
      schema: {
        summary: "add a webhook; its signing secret is shown once",
        body: {
          type: "object",
          required: ["url"],
          additionalProperties: false,
          properties: {
            url: { type: "string", minLength: 8, maxLength: 2048 },
            events: {
              type: "array",
              maxItems: 64,
              items: { type: "string", minLength: 1, maxLength: 64, pattern: "^(\\*|[a-z][a-z0-9_.]*)$" },
            },
            caPem: { type: "string", minLength: 1, maxLength: 65536 },
          },
        },
        response: {
          201: {
            type: "object",
            required: [...webhookSchema.required, "secret"],
            properties: { ...webhookProperties, secret: { type: "string" } },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request, reply) => {
      const b = request.body;
      request.auditTarget = `webhook:${safeUrl(b.url)}`;
      const made = await createWebhook(ctx.database, ctx.clock, {
        url: b.url,
        ...(b.events !== undefined ? { events: b.events } : {}),
        ...(b.caPem !== undefined ? { caPem: b.caPem } : {}),
        createdBy: actorName(request.actor),
      });
      await auditRequest(ctx, request, "webhook.create", `webhook:${made.webhook.id}`, "ok", {
        url: safeUrl(made.webhook.url),
        events: made.webhook.events,
        customCa: made.webhook.customCa,
      });
      return reply.code(201).send({ ...made.webhook, secret: made.secret });
    },
  );

  app.get(
    "/api/v1/webhooks",
    {
      onRequest: admin,
      schema: {
        summary: "list webhooks and their delivery state (never their secrets)",
        response: {
          200: {
            type: "object",
            required: ["webhooks"],
            properties: { webhooks: { type: "array", items: webhookSchema } },
          },
          ...authErrors,
        },
      },
    },
    async () => ({ webhooks: await listWebhooks(ctx.database) }),
  );

  app.delete<{ Params: { id: string } }>(
    "/api/v1/webhooks/:id",
    {
      onRequest: admin,
      config: { action: "webhook.delete" },
      schema: {
        summary: "remove a webhook (an event in flight may still arrive)",
        params: {
          type: "object",
          required: ["id"],
          additionalProperties: false,
          properties: { id: { type: "string", minLength: 1, maxLength: 64 } },
        },
        response: { 200: webhookSchema, ...authErrors },
      },
    },
    async (request) => {
      request.auditTarget = `webhook:${request.params.id}`;
      const gone = await deleteWebhook(ctx.database, request.params.id);
      if (gone === undefined)
        throw httpError(
          404,
          "WEBHOOK_NOT_FOUND",
          `no webhook ${request.params.id}`,
          "list webhooks with `lifeboat webhooks list`",
        );
      await auditRequest(ctx, request, "webhook.delete", `webhook:${gone.id}`, "ok", {
        url: safeUrl(gone.url),
      });
      return gone;
    },
  );
}
