import type {} from "@fastify/rate-limit";
import type { FastifyInstance } from "fastify";
import { checkCsrf, findApiKey, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import {
  SESSION_TTL_SECONDS,
  createSession,
  deleteSession,
  findSession,
  sessionCookie,
  sessionCookieOf,
} from "../sessions.js";

const sessionView = {
  type: "object",
  required: ["keyId", "name", "role", "expiresAt"],
  properties: {
    keyId: { type: "string" },
    name: { type: "string" },
    role: { type: "string", enum: ["admin", "operator", "viewer"] },
    expiresAt: { type: "string" },
  },
} as const;

/**
 * The web console's sign-in: POST trades an API key for a session cookie
 * (httpOnly, Secure, SameSite=Strict; sessions.ts), GET says who is signed in,
 * DELETE signs out. Sign-in is rate-limited per address like registration.
 */
export function sessionRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");

  app.post<{ Body: { apiKey: string } }>(
    "/api/v1/session",
    {
      config: {
        action: "session.create",
        rateLimit: { max: ctx.config.registerRateLimitPerMinute, timeWindow: 60_000 },
      },
      onRequest: (request, _reply, done) => {
        // Sign-in has no cookie yet, but a page of another site must not sign a browser in either.
        try {
          checkCsrf(request);
          done();
        } catch (err) {
          done(err as Error);
        }
      },
      schema: {
        summary: "sign in to the console with an API key: sets the session cookie",
        body: {
          type: "object",
          required: ["apiKey"],
          additionalProperties: false,
          properties: { apiKey: { type: "string", minLength: 1, maxLength: 256 } },
        },
        response: {
          201: sessionView,
          400: errorSchema,
          401: errorSchema,
          403: errorSchema,
          429: errorSchema,
        },
      },
    },
    async (request, reply) => {
      const key = await findApiKey(ctx.database, request.body.apiKey);
      if (key === undefined)
        throw httpError(401, "AUTH_INVALID", "the API key is unknown, malformed or revoked", "check the key");
      const s = await createSession(ctx.database, ctx.clock, key.id, request.ip);
      request.actor = { kind: "apikey", id: key.id, role: key.role, name: key.name, session: true };
      await auditRequest(ctx, request, "session.create", `apikey:${key.id}`, "ok", { role: key.role });
      void reply.header("set-cookie", sessionCookie(s.value, SESSION_TTL_SECONDS));
      return reply.code(201).send({
        keyId: key.id,
        name: key.name,
        role: key.role,
        expiresAt: new Date(s.expiresAt).toISOString(),
      });
    },
  );

  app.get(
    "/api/v1/session",
    {
      onRequest: viewer,
      schema: {
        summary: "who is signed in (the console's session, or the API key sent)",
        response: { 200: sessionView, 401: errorSchema, 403: errorSchema },
      },
    },
    async (request) => {
      const a = request.actor;
      if (a.kind !== "apikey") throw httpError(401, "AUTH_REQUIRED", "sign in", "");
      const cookie = sessionCookieOf(request.headers.cookie);
      const s = a.session && cookie ? await findSession(ctx.database, ctx.clock, cookie) : undefined;
      return {
        keyId: a.id,
        name: a.name,
        role: a.role,
        expiresAt: new Date(s?.expiresAt ?? ctx.clock.now()).toISOString(),
      };
    },
  );

  app.delete(
    "/api/v1/session",
    {
      onRequest: viewer,
      config: { action: "session.delete" },
      schema: {
        summary: "sign out: ends the console session and clears its cookie",
        response: { 204: { type: "null" }, 401: errorSchema, 403: errorSchema },
      },
    },
    async (request, reply) => {
      const cookie = sessionCookieOf(request.headers.cookie);
      if (cookie !== undefined) await deleteSession(ctx.database, cookie);
      await auditRequest(
        ctx,
        request,
        "session.delete",
        `apikey:${request.actor.kind === "apikey" ? request.actor.id : ""}`,
        "ok",
      );
      void reply.header("set-cookie", sessionCookie("", 0));
      return reply.code(204).send();
    },
  );
}
