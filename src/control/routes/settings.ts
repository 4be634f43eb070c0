import type {} from "@fastify/swagger";
import type { FastifyInstance } from "fastify";
import { actorName, requireOperator, requireOperatorOrAgent } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import type { SettingsKind } from "../db/index.js";
import { errorSchema, httpError } from "../http-error.js";
import {
  SETTINGS_KINDS,
  type Override,
  applyPatch,
  effectiveSettings,
  readOverride,
  writeOverride,
} from "../settings.js";

const nullable = (s: Record<string, unknown>) => ({ anyOf: [s, { type: "null" }] });
const text = { type: "string", minLength: 1, maxLength: 4096 };
/** PUT bodies: any subset of the fields; null removes that field's override. */
const patchProperties: Record<SettingsKind, Record<string, unknown>> = {
  replication: {
    bandwidthMbps: nullable({
      anyOf: [
        { type: "number", exclusiveMinimum: 0, maximum: 1_000_000 },
        { type: "string", enum: ["unlimited"] },
      ],
    }),
    pitIntervalMinutes: nullable({ type: "integer", minimum: 1, maximum: 1440 }),
    retention: nullable({ type: "string", minLength: 1, maxLength: 200 }),
    consistency: nullable({ type: "string", enum: ["application", "filesystem", "crash"] }),
    preFreezeHook: nullable(text),
    postThawHook: nullable(text),
    replicatorId: nullable({ type: "string", minLength: 1, maxLength: 64 }),
    tags: nullable({ type: "array", maxItems: 64, items: { type: "string", minLength: 1, maxLength: 64 } }),
    rpoMinutes: nullable({ type: "integer", minimum: 1, maximum: 10_080 }),
  },
  launch: {
    target: nullable({ type: "string", enum: ["image", "block", "qemu", "command"] }),
    bootProfile: nullable({ type: "string", minLength: 1, maxLength: 64 }),
    outputDir: nullable(text),
    postLaunchChecks: nullable({ type: "array", maxItems: 64, items: text }),
    hostname: nullable({ type: "string", minLength: 1, maxLength: 253 }),
    addressMap: nullable({
      type: "array",
      maxItems: 256,
      items: {
        type: "object",
        required: ["from", "to"],
        additionalProperties: false,
        properties: { from: { type: "string", maxLength: 64 }, to: { type: "string", maxLength: 64 } },
      },
    }),
    blockDevices: nullable({ type: "array", maxItems: 64, items: text }),
    successPattern: nullable({ type: "string", minLength: 1, maxLength: 1024 }),
    bootTimeoutSeconds: nullable({ type: "integer", minimum: 5, maximum: 86_400 }),
    qemuMemoryMiB: nullable({ type: "integer", minimum: 64, maximum: 1_048_576 }),
    qemuNetwork: nullable({ type: "string", enum: ["none", "user"] }),
    qemuAccel: nullable({ type: "string", enum: ["auto", "kvm", "tcg"] }),
    qemuKernel: nullable(text),
    qemuInitrd: nullable(text),
    qemuAppend: nullable(text),
    command: nullable(text),
    commandTimeoutSeconds: nullable({ type: "integer", minimum: 1, maximum: 86_400 }),
  },
};
const settingsView = {
  type: "object",
  required: ["kind", "scope", "settings", "sources", "overrides"],
  properties: {
    kind: { type: "string", enum: [...SETTINGS_KINDS] },
    scope: { type: "string" },
    settings: { type: "object", additionalProperties: true },
    sources: {
      type: "object",
      additionalProperties: { type: "string", enum: ["builtin", "default", "server"] },
    },
    overrides: { type: "object", additionalProperties: true },
  },
} as const;
const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;
const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", maxLength: 253 } },
} as const;

/**
 * Settings: the default template (GET any operator role, PUT admin) and each
 * server's effective settings (GET viewer or the server's own agent) and
 * override (PUT operator). PUT bodies are merged into what is stored; a field
 * set to null drops the override. Every change is audited with old and new.
 */
export function settingsRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const operator = requireOperator(ctx.database, ctx.clock, "operator");
  const admin = requireOperator(ctx.database, ctx.clock, "admin");
  const readers = requireOperatorOrAgent(ctx.database, ctx.clock, ctx.ca.certPem);

  const findServer = async (key: string, agentId?: string): Promise<string> => {
    const row = await ctx.database.db
      .selectFrom("servers")
      .select("id")
      .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
      .where("decommissioned_at", "is", null)
      .executeTakeFirst();
    if (row === undefined || (agentId !== undefined && row.id !== agentId))
      throw httpError(
        404,
        "SERVER_NOT_FOUND",
        `no server ${key}`,
        "list servers with `lifeboat servers list`",
      );
    return row.id;
  };
  const view = async (kind: SettingsKind, scope: string) => {
    const eff = await effectiveSettings(ctx.database, scope === "default" ? null : scope, kind);
    return { kind, scope, ...eff, overrides: await readOverride(ctx.database, scope, kind) };
  };
  const update = async (kind: SettingsKind, scope: string, patch: Override, by: string) =>
    ctx.database.db.transaction().execute(async (trx) => {
      const old = await readOverride({ db: trx }, scope, kind);
      // The assigned replicator must exist; a name is stored as its id.
      if (kind === "replication" && typeof patch.replicatorId === "string") {
        const key = patch.replicatorId;
        const rep = await trx
          .selectFrom("replicators")
          .select("id")
          .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
          .where("decommissioned_at", "is", null)
          .executeTakeFirst();
        if (rep === undefined)
          throw httpError(
            400,
            "REQUEST_INVALID",
            `body.replicatorId: no registered replicator ${key}`,
            "list replicators with `lifeboat replicators list`",
          );
        patch = { ...patch, replicatorId: rep.id };
      }
      const next = applyPatch(kind, old, patch);
      await writeOverride({ db: trx }, scope, kind, next, by, ctx.clock.now());
      return { old, next };
    });

  for (const kind of SETTINGS_KINDS) {
    const body = {
      type: "object",
      additionalProperties: false,
      properties: patchProperties[kind],
    };
    app.get(
      `/api/v1/settings/${kind}`,
      {
        onRequest: viewer,
        schema: {
          summary: `the default ${kind} settings template`,
          response: { 200: settingsView, ...errors },
        },
      },
      async () => view(kind, "default"),
    );
    app.put<{ Body: Override }>(
      `/api/v1/settings/${kind}`,
      {
        onRequest: admin,
        config: { action: `settings.${kind}.default` },
        schema: {
          summary: `change the default ${kind} settings template (null: back to the built-in)`,
          body,
          response: { 200: settingsView, 400: errorSchema, ...errors },
        },
      },
      async (request) => {
        request.auditTarget = `settings:default:${kind}`;
        const { old, next } = await update(kind, "default", request.body, actorName(request.actor));
        await auditRequest(ctx, request, `settings.${kind}.default`, `settings:default:${kind}`, "ok", {
          old,
          new: next,
        });
        return view(kind, "default");
      },
    );
    app.get<{ Params: { id: string } }>(
      `/api/v1/servers/:id/settings/${kind}`,
      {
        onRequest: readers,
        schema: {
          summary: `a server's effective ${kind} settings and where each value comes from`,
          params: idParams,
          response: { 200: settingsView, ...errors },
        },
      },
      async (request) => {
        const agentId = request.actor.kind === "client" ? request.actor.subjectId : undefined;
        return view(kind, await findServer(request.params.id, agentId));
      },
    );
    app.put<{ Params: { id: string }; Body: Override }>(
      `/api/v1/servers/:id/settings/${kind}`,
      {
        onRequest: operator,
        config: { action: `settings.${kind}.server` },
        schema: {
          summary: `override a server's ${kind} settings (null: back to the template)`,
          params: idParams,
          body,
          response: { 200: settingsView, 400: errorSchema, ...errors },
        },
      },
      async (request) => {
        request.auditTarget = `server:${request.params.id}`;
        const id = await findServer(request.params.id);
        const { old, next } = await update(kind, id, request.body, actorName(request.actor));
        await auditRequest(ctx, request, `settings.${kind}.server`, `server:${id}`, "ok", { old, new: next });
        return view(kind, id);
      },
    );
  }
}
