import type { FastifyInstance } from "fastify";
import { readFile } from "node:fs/promises";
import { requireOperator } from "../auth.js";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import { getJob } from "../jobs.js";
import { LAG_HISTORY_HOURS, lagHistory } from "../lag-history.js";
import { serverOverview } from "../server-overview.js";
import { anyObject, authErrors, idParams } from "./schemas.js";

const nullableString = { type: ["string", "null"] } as const;
const overviewSchema = {
  type: "object",
  required: ["id", "name", "state", "online", "rpo"],
  properties: {
    id: { type: "string" },
    name: { type: "string" },
    state: { type: "string" },
    online: { type: "boolean" },
    lagSeconds: { type: ["number", "null"] },
    backlogBytes: { type: ["number", "null"] },
    lastSeenAt: nullableString,
    lastPit: {
      type: ["object", "null"],
      required: ["id", "time", "ageSeconds", "consistency"],
      properties: {
        id: { type: "string" },
        time: { type: "string" },
        ageSeconds: { type: "number" },
        consistency: { type: "string" },
      },
    },
    rpo: {
      type: "object",
      required: ["targetSeconds", "met"],
      properties: { targetSeconds: { type: "number" }, met: { type: "boolean" } },
    },
    readiness: {
      type: ["object", "null"],
      required: ["profile", "ready", "verdict", "problems"],
      properties: {
        profile: { type: "string" },
        ready: { type: "boolean" },
        verdict: { type: "string" },
        problems: { type: "integer" },
      },
    },
    replicator: {
      type: ["object", "null"],
      required: ["id", "name"],
      properties: { id: { type: "string" }, name: { type: "string" } },
    },
    group: nullableString,
  },
} as const;

/**
 * Read APIs the web console's pages need beyond the resources' own routes:
 * the Servers overview (one row a server with its newest PIT, RPO and
 * readiness), a server's lag history, a launch job's drill reports and the
 * audit log. Operators of any role.
 */
export function consoleRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");

  app.get(
    "/api/v1/console/servers",
    {
      onRequest: viewer,
      schema: {
        summary: "every server at a glance: state, lag, newest PIT, RPO, readiness, replicator",
        response: {
          200: {
            type: "object",
            required: ["servers", "generatedAt"],
            properties: {
              servers: { type: "array", items: overviewSchema },
              generatedAt: { type: "string" },
            },
          },
          ...authErrors,
        },
      },
    },
    async () => ({
      servers: await serverOverview(ctx.database, ctx.clock, ctx.config.heartbeatTimeoutSeconds),
      generatedAt: new Date(ctx.clock.now()).toISOString(),
    }),
  );

  app.get<{ Params: { id: string }; Querystring: { hours?: string } }>(
    "/api/v1/servers/:id/lag",
    {
      onRequest: viewer,
      schema: {
        summary: "a server's lag and backlog, sampled about once a minute, over the last hours",
        params: idParams,
        querystring: {
          type: "object",
          additionalProperties: false,
          // Query values are strings (the app coerces no types): 1 to LAG_HISTORY_HOURS (26).
          properties: { hours: { type: "string", pattern: "^([1-9]|1[0-9]|2[0-6])$" } },
        },
        response: {
          200: {
            type: "object",
            required: ["serverId", "samples"],
            properties: {
              serverId: { type: "string" },
              samples: {
                type: "array",
                items: {
                  type: "object",
                  required: ["at", "lagSeconds", "backlogBytes"],
                  properties: {
                    at: { type: "string" },
                    lagSeconds: { type: ["number", "null"] },
                    backlogBytes: { type: ["number", "null"] },
                  },
                },
              },
            },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request) => {
      const key = request.params.id;
      const row = await ctx.database.db
        .selectFrom("servers")
        .select("id")
        .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
        .executeTakeFirst();
      if (row === undefined)
        throw httpError(
          404,
          "SERVER_NOT_FOUND",
          `no server ${key}`,
          "list servers with `lifeboat servers list`",
        );
      const samples = await lagHistory(
        ctx.database,
        ctx.clock,
        row.id,
        Math.min(LAG_HISTORY_HOURS, Number(request.query.hours ?? 6)),
      );
      return {
        serverId: row.id,
        samples: samples.map((s) => ({ ...s, at: new Date(s.at).toISOString() })),
      };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/jobs/:id/report",
    {
      onRequest: viewer,
      schema: {
        summary: "the drill or recovery reports of a launch job (report.json of each server)",
        params: idParams,
        response: {
          200: {
            type: "object",
            required: ["jobId", "reports"],
            properties: { jobId: { type: "string" }, reports: { type: "array", items: anyObject } },
          },
          ...authErrors,
        },
      },
    },
    async (request) => {
      const id = request.params.id;
      const found = await getJob(ctx.database, id);
      if (found === undefined)
        throw httpError(404, "JOB_NOT_FOUND", `no job ${id}`, "list jobs with `lifeboat jobs list`");
      const result = found.job.result as
        { outputs?: { servers?: { report?: unknown }[] } } | null | undefined;
      const files = (result?.outputs?.servers ?? [])
        .map((s) => s.report)
        .filter((f): f is string => typeof f === "string");
      const reports: object[] = [];
      for (const file of files) {
        try {
          reports.push(JSON.parse(await readFile(file, "utf8")) as object);
        } catch (err) {
          request.log.warn({ err: String(err), file }, "a drill report could not be read");
        }
      }
      if (reports.length === 0)
        throw httpError(
          404,
          "JOB_REPORT_NOT_FOUND",
          `job ${id} has no drill report (${found.job.state}${files.length > 0 ? "; its report files are gone" : ""})`,
          "reports are written when a drill or recovery finishes; a terminated drill's are removed",
        );
      return { jobId: id, reports };
    },
  );

  app.get<{ Querystring: { limit?: string; before?: string } }>(
    "/api/v1/audit",
    {
      onRequest: viewer,
      schema: {
        summary: "the audit log, newest first",
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            limit: { type: "string", pattern: "^([1-9][0-9]{0,2}|1000)$" },
            before: { type: "string", pattern: "^[1-9][0-9]{0,15}$" },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["records"],
            properties: {
              records: {
                type: "array",
                items: {
                  type: "object",
                  required: ["seq", "at", "actor", "action", "target", "source", "result", "details"],
                  properties: {
                    seq: { type: "integer" },
                    at: { type: "string" },
                    actor: { type: "string" },
                    action: { type: "string" },
                    target: { type: "string" },
                    source: { type: "string" },
                    result: { type: "string" },
                    details: anyObject,
                  },
                },
              },
            },
          },
          400: errorSchema,
          ...authErrors,
        },
      },
    },
    async (request) => {
      let q = ctx.database.db.selectFrom("audit_log").selectAll().orderBy("seq", "desc");
      if (request.query.before !== undefined) q = q.where("seq", "<", Number(request.query.before));
      const rows = await q.limit(Number(request.query.limit ?? 200)).execute();
      return {
        records: rows.map((r) => ({
          seq: Number(r.seq),
          at: new Date(Number(r.at)).toISOString(),
          actor: r.actor,
          action: r.action,
          target: r.target,
          source: r.source,
          result: r.result,
          details: JSON.parse(r.details_json) as object,
        })),
      };
    },
  );
}
