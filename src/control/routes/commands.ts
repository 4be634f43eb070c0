import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { actorName, requireClient, requireOperator } from "../auth.js";
import {
  CONSISTENCY_LEVELS,
  CommandNotifier,
  type ConsistencyLevel,
  GROUP_NAME,
  type Outcome,
  commandView,
} from "../command-rows.js";
import {
  completeCommand,
  findServer,
  getCommand,
  getGroupPit,
  requestPit,
  takeCommands,
} from "../commands.js";
import { abortGroupPit, checkBarrier, reportFrozen, requestGroupPit } from "../group-pits.js";
import { type AppContext, auditRequest } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";

const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;
const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", minLength: 1, maxLength: 253 } },
} as const;
const problem = {
  type: ["object", "null"],
  required: ["code", "message"],
  properties: { code: { type: "string" }, message: { type: "string" } },
} as const;
const commandSchema = {
  type: "object",
  required: ["id", "serverId", "kind", "params", "state", "createdAt", "updatedAt", "deadlineAt"],
  properties: {
    id: { type: "string" },
    serverId: { type: "string" },
    kind: { type: "string" },
    params: { type: "object", additionalProperties: true },
    state: { type: "string" },
    createdAt: { type: "string" },
    updatedAt: { type: "string" },
    deadlineAt: { type: "string" },
    result: { type: ["object", "null"], additionalProperties: true },
    error: problem,
    groupPitId: { type: ["string", "null"] },
    jobId: { type: ["string", "null"] },
  },
} as const;
const pitRequestBody = {
  type: "object",
  additionalProperties: false,
  properties: {
    consistency: { type: "string", enum: [...CONSISTENCY_LEVELS] },
    barrierTimeoutMs: { type: "integer", minimum: 100, maximum: 60_000 },
  },
} as const;

/** How often a waiter re-reads the database, for changes made by other control-plane processes. */
const RECHECK_MS = 1000;
const BARRIER_RECHECK_MS = 100;

/**
 * Commands for agents (commands.ts): operators ask for PITs of a server or a
 * consistency group and follow them; agents fetch commands by long poll,
 * report frozen at a group PIT's barrier, and complete them. An agent sees
 * and completes only its own server's commands. PATCH /api/v1/servers/:id
 * puts a server in a consistency group.
 */
export function commandRoutes(app: FastifyInstance, ctx: AppContext): void {
  const operator = requireOperator(ctx.database, ctx.clock, "operator");
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const agent = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "agent");
  const notifier = new CommandNotifier();
  app.addHook("preClose", (done) => {
    notifier.close();
    done();
  });
  const agentId = (request: FastifyRequest): string => {
    if (request.actor.kind !== "client") throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "agent route", "");
    return request.actor.subjectId;
  };
  /** An AbortSignal that fires when the client goes away, so a waiter stops early. */
  const gone = (reply: FastifyReply): AbortSignal => {
    const c = new AbortController();
    // The response closes before it was sent only when the connection went away.
    reply.raw.once("close", () => c.abort());
    return c.signal;
  };

  app.post<{ Params: { id: string }; Body: { consistency?: ConsistencyLevel } }>(
    "/api/v1/servers/:id/pits",
    {
      onRequest: operator,
      config: { action: "pit.request" },
      schema: {
        summary: "ask a server's agent for a PIT now",
        params: idParams,
        body: { ...pitRequestBody, properties: { consistency: pitRequestBody.properties.consistency } },
        response: {
          202: {
            type: "object",
            required: ["commandId", "jobId", "state"],
            properties: {
              commandId: { type: "string" },
              jobId: { type: "string" },
              state: { type: "string" },
            },
          },
          400: errorSchema,
          409: errorSchema,
          ...errors,
        },
      },
    },
    async (request, reply) => {
      request.auditTarget = `server:${request.params.id}`;
      const server = await findServer(ctx.database, request.params.id);
      if (server === undefined)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `no server ${request.params.id}`,
          "list servers with `lifeboat servers list`",
        );
      const { command, jobId } = await requestPit(ctx.database, ctx.clock, server, {
        ...(request.body.consistency !== undefined ? { consistency: request.body.consistency } : {}),
        createdBy: actorName(request.actor),
      });
      notifier.notify(server.id);
      await auditRequest(ctx, request, "pit.request", `server:${server.id}`, "ok", {
        commandId: command.id,
        jobId,
      });
      return reply.code(202).send({ commandId: command.id, jobId, state: command.state });
    },
  );

  app.post<{
    Params: { group: string };
    Body: { consistency?: ConsistencyLevel; barrierTimeoutMs?: number };
  }>(
    "/api/v1/groups/:group/pits",
    {
      onRequest: operator,
      config: { action: "group-pit.request" },
      schema: {
        summary: "ask every server of a consistency group for one PIT at one consistency point",
        params: {
          type: "object",
          required: ["group"],
          additionalProperties: false,
          properties: { group: { type: "string", pattern: GROUP_NAME.source } },
        },
        body: pitRequestBody,
        response: {
          202: {
            type: "object",
            required: ["groupPitId", "jobId", "commands"],
            properties: {
              groupPitId: { type: "string" },
              jobId: { type: "string" },
              commands: {
                type: "array",
                items: {
                  type: "object",
                  required: ["serverId", "commandId"],
                  properties: { serverId: { type: "string" }, commandId: { type: "string" } },
                },
              },
            },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request, reply) => {
      request.auditTarget = `group:${request.params.group}`;
      const r = await requestGroupPit(ctx.database, ctx.clock, request.params.group, {
        ...request.body,
        createdBy: actorName(request.actor),
      });
      for (const c of r.commands) notifier.notify(c.serverId);
      await auditRequest(ctx, request, "group-pit.request", `group:${request.params.group}`, "ok", {
        groupPitId: r.groupPit.id,
        jobId: r.jobId,
      });
      return reply.code(202).send({ groupPitId: r.groupPit.id, jobId: r.jobId, commands: r.commands });
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/commands/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "a command for an agent: its state and result",
        params: idParams,
        response: { 200: commandSchema, ...errors },
      },
    },
    async (request) => {
      const c = await getCommand(ctx.database, ctx.clock, request.params.id);
      if (c === undefined) throw httpError(404, "COMMAND_NOT_FOUND", `no command ${request.params.id}`, "");
      return c;
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/group-pits/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "a group PIT: its state, consistency time and each member's result",
        params: idParams,
        response: {
          200: {
            type: "object",
            required: ["id", "group", "state", "takenAt", "jobId", "members"],
            properties: {
              id: { type: "string" },
              group: { type: "string" },
              state: { type: "string" },
              takenAt: { type: ["string", "null"] },
              jobId: { type: "string" },
              createdAt: { type: "string" },
              members: {
                type: "array",
                items: {
                  type: "object",
                  required: ["serverId", "commandId", "state"],
                  properties: {
                    serverId: { type: "string" },
                    commandId: { type: "string" },
                    state: { type: "string" },
                    result: { type: ["object", "null"], additionalProperties: true },
                    error: problem,
                  },
                },
              },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const g = await getGroupPit(ctx.database, ctx.clock, request.params.id);
      if (g === undefined)
        throw httpError(404, "GROUP_PIT_NOT_FOUND", `no group PIT ${request.params.id}`, "");
      return g;
    },
  );

  app.get<{ Querystring: { waitSeconds?: string } }>(
    "/api/v1/agent/commands",
    {
      onRequest: agent,
      logLevel: "warn",
      schema: {
        summary: "an agent fetches its commands (long poll: waits up to waitSeconds, at most 60, for one)",
        querystring: {
          type: "object",
          additionalProperties: false,
          // A query string is text (the app does not coerce types): seconds, 0 to 60.
          properties: { waitSeconds: { type: "string", pattern: "^([0-9]|[1-5][0-9]|60)$" } },
        },
        response: {
          200: {
            type: "object",
            required: ["commands"],
            properties: {
              commands: {
                type: "array",
                items: {
                  type: "object",
                  required: ["id", "kind", "params"],
                  properties: {
                    id: { type: "string" },
                    kind: { type: "string" },
                    params: { type: "object", additionalProperties: true },
                  },
                },
              },
            },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const serverId = agentId(request);
      const signal = gone(reply);
      const until = Date.now() + Number(request.query.waitSeconds ?? 0) * 1000;
      for (;;) {
        const taken = await takeCommands(ctx.database, ctx.clock, serverId);
        const left = until - Date.now();
        if (taken.length > 0 || left <= 0 || signal.aborted || notifier.isClosed) {
          // Shutting down: close the connection after this answer, or it would hold the server's close.
          if (notifier.isClosed) void reply.header("connection", "close");
          return {
            commands: taken.map((c) => {
              const v = commandView(c);
              return { id: v.id, kind: v.kind, params: v.params };
            }),
          };
        }
        await notifier.wait(serverId, Math.min(RECHECK_MS, left), signal);
      }
    },
  );

  app.post<{ Params: { id: string }; Body: Record<string, never> }>(
    "/api/v1/agent/commands/:id/frozen",
    {
      onRequest: agent,
      config: { action: "command.frozen" },
      schema: {
        summary: "a group PIT member froze; waits at the barrier until all froze (proceed) or it failed",
        params: idParams,
        body: { type: "object", additionalProperties: false, properties: {} },
        response: {
          200: {
            type: "object",
            required: ["proceed"],
            properties: { proceed: { type: "boolean" }, takenAt: { type: "integer" } },
          },
          400: errorSchema,
          409: errorSchema,
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const serverId = agentId(request);
      request.auditTarget = `command:${request.params.id}`;
      const r = await reportFrozen(ctx.database, ctx.clock, serverId, request.params.id);
      notifier.notify(`group:${r.groupPitId}`);
      const until = Date.now() + r.timeoutMs;
      let state = r.state;
      while ("waiting" in state) {
        const left = until - Date.now();
        if (left <= 0 || notifier.isClosed) {
          if (
            await abortGroupPit(
              ctx.database,
              ctx.clock,
              r.groupPitId,
              `not every member froze within ${r.timeoutMs} ms`,
            )
          )
            notifier.notify(`group:${r.groupPitId}`);
        } else await notifier.wait(`group:${r.groupPitId}`, Math.min(BARRIER_RECHECK_MS, left));
        state = await checkBarrier(ctx.database, ctx.clock, r.groupPitId);
      }
      notifier.notify(`group:${r.groupPitId}`);
      if (notifier.isClosed) void reply.header("connection", "close");
      await auditRequest(ctx, request, "command.frozen", `command:${request.params.id}`, "ok", {
        groupPitId: r.groupPitId,
        proceed: state.proceed,
      });
      return state.proceed ? { proceed: true, takenAt: state.takenAt } : { proceed: false };
    },
  );

  app.post<{ Params: { id: string }; Body: Outcome }>(
    "/api/v1/agent/commands/:id/complete",
    {
      onRequest: agent,
      config: { action: "command.complete" },
      schema: {
        summary: "an agent reports how a command ended (idempotent)",
        params: idParams,
        body: {
          oneOf: [
            {
              type: "object",
              required: ["ok", "result"],
              additionalProperties: false,
              properties: {
                ok: { const: true },
                result: {
                  type: "object",
                  additionalProperties: true,
                  properties: { pitId: { type: "string", minLength: 1, maxLength: 64 } },
                },
              },
            },
            {
              type: "object",
              required: ["ok", "code", "message"],
              additionalProperties: false,
              properties: {
                ok: { const: false },
                code: { type: "string", pattern: "^[A-Z][A-Z0-9_]{0,63}$" },
                message: { type: "string", maxLength: 4096 },
              },
            },
          ],
        },
        response: { 200: commandSchema, 400: errorSchema, 409: errorSchema, ...errors },
      },
    },
    async (request) => {
      const serverId = agentId(request);
      request.auditTarget = `command:${request.params.id}`;
      const view = await completeCommand(ctx.database, ctx.clock, serverId, request.params.id, request.body);
      if (view.groupPitId !== null) notifier.notify(`group:${view.groupPitId}`);
      await auditRequest(ctx, request, "command.complete", `command:${view.id}`, "ok", {
        state: view.state,
        ...(view.error !== null ? { code: view.error.code } : {}),
      });
      return view;
    },
  );

  app.patch<{ Params: { id: string }; Body: { group: string | null } }>(
    "/api/v1/servers/:id",
    {
      onRequest: operator,
      config: { action: "server.update" },
      schema: {
        summary: "change a server: its consistency group (null: none)",
        params: idParams,
        body: {
          type: "object",
          required: ["group"],
          additionalProperties: false,
          properties: {
            group: { anyOf: [{ type: "string", pattern: GROUP_NAME.source }, { type: "null" }] },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["id", "name", "group"],
            properties: {
              id: { type: "string" },
              name: { type: "string" },
              group: { type: ["string", "null"] },
            },
          },
          400: errorSchema,
          409: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      request.auditTarget = `server:${request.params.id}`;
      const server = await findServer(ctx.database, request.params.id);
      if (server === undefined)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `no server ${request.params.id}`,
          "list servers with `lifeboat servers list`",
        );
      if (server.decommissioned_at !== null)
        throw httpError(409, "SERVER_DECOMMISSIONED", `server ${server.name} was decommissioned`, "");
      const group = request.body.group;
      await ctx.database.db
        .updateTable("servers")
        .set({ group_name: group })
        .where("id", "=", server.id)
        .execute();
      await auditRequest(ctx, request, "server.update", `server:${server.id}`, "ok", {
        group: { from: server.group_name ?? null, to: group },
      });
      return { id: server.id, name: server.name, group };
    },
  );
}
