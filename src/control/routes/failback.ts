import type { FastifyInstance, FastifyRequest } from "fastify";
import { actorName, requireClient, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import { cancelFailback, getFailback, listFailbacks, requestCutover, startFailback } from "../failback.js";
import { changedChunks, compareChunks, nextPass, reportProblem } from "../failback-passes.js";
import type { FailbackDeps } from "../failback-rows.js";
import { errorSchema, httpError } from "../http-error.js";

const errors = {
  400: errorSchema,
  401: errorSchema,
  403: errorSchema,
  404: errorSchema,
  409: errorSchema,
} as const;
const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", minLength: 1, maxLength: 253 } },
} as const;
const failbackSchema = {
  type: "object",
  required: ["id", "jobId", "state", "source", "target", "disks", "pass", "bytesSent"],
  additionalProperties: true,
  properties: {
    id: { type: "string" },
    jobId: { type: "string" },
    state: { type: "string" },
    source: { type: "object", additionalProperties: true },
    target: { type: "object", additionalProperties: true },
    disks: { type: "array", items: { type: "object", additionalProperties: true } },
    pass: { type: "integer" },
    bytesSent: { type: "integer" },
    lagSeconds: { type: ["integer", "null"] },
    backlog: {
      type: ["object", "null"],
      description: "what the current pass still goes through: chunks, and their bytes at most",
      properties: { chunks: { type: "integer" }, bytes: { type: "integer" } },
    },
  },
} as const;
const emptyBody = { type: "object", additionalProperties: false, properties: {} } as const;
const binary = {
  type: "string",
  format: "binary",
  description: "a chunk batch (wire/chunk-batch.ts)",
} as const;
const uint = { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;

/**
 * Failback (failback.ts): operators start one, follow it, cut over or
 * cancel; the original server's agent, in receive mode, asks for its passes
 * and fetches the chunks that differ.
 */
export function failbackRoutes(app: FastifyInstance, ctx: AppContext): void {
  const operator = requireOperator(ctx.database, ctx.clock, "operator");
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const agent = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "agent");
  const deps = (): FailbackDeps => failbackDeps(ctx);
  const agentId = (request: FastifyRequest): string => {
    if (request.actor.kind !== "client") throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "agent route", "");
    request.audited = true; // polled by the agent: its progress is in the job log, not the audit log
    return request.actor.subjectId;
  };

  app.post<{ Body: { source: string; to?: string } }>(
    "/api/v1/failbacks",
    {
      onRequest: operator,
      config: { action: "failback.start" },
      schema: {
        summary: "start a failback from a recovered instance back onto the original server",
        body: {
          type: "object",
          required: ["source"],
          additionalProperties: false,
          properties: {
            source: {
              type: "string",
              minLength: 1,
              maxLength: 253,
              description: "recovery job or recovered instance's server",
            },
            to: { type: "string", minLength: 1, maxLength: 253, description: "the original server" },
          },
        },
        response: { 201: failbackSchema, ...errors },
      },
    },
    async (request, reply) => {
      request.auditTarget = `server:${request.body.to ?? request.body.source}`;
      const fb = await startFailback(deps(), { ...request.body, createdBy: actorName(request.actor) });
      await auditRequest(ctx, request, "failback.start", `server:${fb.target.id}`, "ok", {
        failbackId: fb.id,
        source: fb.source.name,
      });
      return reply.code(201).send(fb);
    },
  );

  app.get(
    "/api/v1/failbacks",
    {
      onRequest: viewer,
      schema: {
        summary: "list failbacks, newest first",
        response: {
          200: {
            type: "object",
            required: ["failbacks"],
            properties: { failbacks: { type: "array", items: failbackSchema } },
          },
          ...errors,
        },
      },
    },
    async () => ({ failbacks: await listFailbacks(ctx.database, ctx.clock) }),
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/failbacks/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "one failback (by id or job id): pass, lag, bytes sent, verify outcome",
        params: idParams,
        response: { 200: failbackSchema, ...errors },
      },
    },
    async (request) => getFailback(ctx.database, ctx.clock, request.params.id),
  );

  for (const [verb, action, summary] of [
    [
      "cutover",
      "failback.cutover",
      "make the final consistency point on the source, sync and verify the target",
    ],
    ["cancel", "failback.cancel", "stop a failback; the original server stays fenced"],
  ] as const)
    app.post<{ Params: { id: string } }>(
      `/api/v1/failbacks/:id/${verb}`,
      {
        onRequest: operator,
        config: { action },
        schema: { summary, params: idParams, body: emptyBody, response: { 200: failbackSchema, ...errors } },
      },
      async (request) => {
        request.auditTarget = `failback:${request.params.id}`;
        const fb =
          verb === "cutover"
            ? await requestCutover(deps(), request.params.id, actorName(request.actor))
            : await cancelFailback(deps(), request.params.id);
        await auditRequest(ctx, request, action, `failback:${fb.id}`, "ok", {});
        return fb;
      },
    );

  app.post<{ Params: { id: string }; Body: { completed?: number } }>(
    "/api/v1/agent/failback/:id/pass",
    {
      onRequest: agent,
      logLevel: "warn",
      schema: {
        summary: "the receiving agent's current failback pass (reporting the one it completed)",
        params: idParams,
        body: { type: "object", additionalProperties: false, properties: { completed: uint } },
        response: { 200: { type: "object", additionalProperties: true }, ...errors },
      },
    },
    async (request) => nextPass(deps(), request.params.id, agentId(request), request.body.completed),
  );

  app.post<{ Params: { id: string }; Body: { pass: number; disk: number; first: number; hashes: string } }>(
    "/api/v1/agent/failback/:id/compare",
    {
      onRequest: agent,
      logLevel: "warn",
      schema: {
        summary: "compare the target's chunk hashes with the pinned source; get the chunks that differ",
        params: idParams,
        body: {
          type: "object",
          required: ["pass", "disk", "first", "hashes"],
          additionalProperties: false,
          properties: {
            pass: uint,
            disk: { type: "integer", minimum: 0, maximum: 255 },
            first: uint,
            hashes: { type: "string", maxLength: 1_500_000, description: "base64 of 32-byte SHA-256 values" },
          },
        },
        response: { 200: binary, ...errors },
      },
    },
    async (request, reply) => {
      const body = await compareChunks(deps(), request.params.id, agentId(request), {
        ...request.body,
        hashes: Buffer.from(request.body.hashes, "base64"),
      });
      return reply.type("application/octet-stream").send(body);
    },
  );

  app.post<{ Params: { id: string }; Body: { pass: number; disk: number; from: number } }>(
    "/api/v1/agent/failback/:id/changes",
    {
      onRequest: agent,
      logLevel: "warn",
      schema: {
        summary: "the chunks that changed on the source since the previous pass, from a chunk on",
        params: idParams,
        body: {
          type: "object",
          required: ["pass", "disk", "from"],
          additionalProperties: false,
          properties: { pass: uint, disk: { type: "integer", minimum: 0, maximum: 255 }, from: uint },
        },
        response: { 200: binary, ...errors },
      },
    },
    async (request, reply) => {
      const body = await changedChunks(deps(), request.params.id, agentId(request), request.body);
      return reply.type("application/octet-stream").send(body);
    },
  );

  app.post<{ Params: { id: string }; Body: { code: string; message: string } }>(
    "/api/v1/agent/failback/:id/problem",
    {
      onRequest: agent,
      schema: {
        summary: "the receiving agent reports why it cannot write (a mounted disk)",
        params: idParams,
        body: {
          type: "object",
          required: ["code", "message"],
          additionalProperties: false,
          properties: {
            code: { type: "string", pattern: "^[A-Z][A-Z0-9_]{0,63}$" },
            message: { type: "string", maxLength: 4096 },
          },
        },
        response: { 204: { type: "null" }, ...errors },
      },
    },
    async (request, reply) => {
      await reportProblem(deps(), request.params.id, agentId(request), request.body);
      return reply.code(204).send();
    },
  );
}

/** What failback.ts needs from the app (503 without a repository). */
export function failbackDeps(ctx: AppContext): FailbackDeps {
  if (!ctx.repo)
    throw httpError(503, "STORE_UNAVAILABLE", "this control plane has no repository", "start it with one");
  return { database: ctx.database, clock: ctx.clock, repo: ctx.repo };
}
