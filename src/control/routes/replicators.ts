import type {} from "@fastify/rate-limit";
import type { FastifyInstance } from "fastify";
import { readFile } from "node:fs/promises";
import { issueServerCert } from "../../net/index.js";
import { dataPaths } from "../config.js";
import { requireClient, requireOperator } from "../auth.js";
import { type AppContext, auditRequest } from "../context.js";
import type { Replicator } from "../db/index.js";
import { errorSchema, httpError } from "../http-error.js";
import { type ReplicatorRegisterRequest, registerReplicator } from "../register.js";
import {
  type ReplicatorReport,
  assignedServerIds,
  assignments,
  recordReplicatorHeartbeat,
  recordReplicatorPits,
  takeReplicaEpoch,
} from "../replicators.js";
import { splitSecret } from "../secrets.js";
import { decommissionRoute } from "./decommission.js";

const replicatorSchema = {
  type: "object",
  required: ["id", "name", "address", "state", "online", "assignedServers"],
  properties: {
    id: { type: "string" },
    name: { type: "string" },
    address: { type: "string" },
    capacity: { type: "object", additionalProperties: true },
    state: { type: "string" },
    online: { type: "boolean" },
    drained: { type: "boolean" },
    lastSeenAt: { type: ["string", "null"] },
    registeredAt: { type: "string" },
    decommissionedAt: { type: ["string", "null"] },
    assignedServers: { type: "array", items: { type: "string" } },
  },
} as const;
const errors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;
const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", maxLength: 253 } },
} as const;
const ADDRESS = "^(\\[[0-9a-fA-F:]+\\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$";
const notFound = (key: string) =>
  httpError(
    404,
    "REPLICATOR_NOT_FOUND",
    `no replicator ${key}`,
    "list replicators with `lifeboat replicators list`",
  );

/**
 * Replicators: they register with a replicator install token and a CSR, then
 * heartbeat with their client certificate (the answer names the servers
 * assigned to them). Operators of any role list and show them; admins
 * decommission them.
 */
export function replicatorRoutes(app: FastifyInstance, ctx: AppContext): void {
  const viewer = requireOperator(ctx.database, ctx.clock, "viewer");
  const admin = requireOperator(ctx.database, ctx.clock, "admin");
  const replicator = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "replicator");
  const view = (r: Replicator, assigned: Map<string, string | null>) => {
    const lastSeen = r.last_seen_at === null ? null : Number(r.last_seen_at);
    const iso = (ms: number | null) => (ms === null ? null : new Date(Number(ms)).toISOString());
    return {
      id: r.id,
      name: r.name,
      address: r.address,
      capacity: JSON.parse(r.capacity_json) as Record<string, unknown>,
      state: r.state,
      online:
        r.decommissioned_at === null &&
        lastSeen !== null &&
        ctx.clock.now() - lastSeen <= ctx.config.heartbeatTimeoutSeconds * 1000,
      drained: r.drained === 1,
      lastSeenAt: iso(lastSeen),
      registeredAt: iso(r.registered_at)!,
      decommissionedAt: iso(r.decommissioned_at),
      assignedServers: [...assigned]
        .filter(([, rep]) => rep === r.id)
        .map(([s]) => s)
        .sort(),
    };
  };

  app.post<{ Body: ReplicatorRegisterRequest }>(
    "/api/v1/replicator/register",
    {
      config: {
        action: "replicator.register",
        rateLimit: { max: ctx.config.registerRateLimitPerMinute, timeWindow: 60_000 },
      },
      schema: {
        summary: "register a replicator with a replicator install token",
        body: {
          type: "object",
          required: ["token", "csr", "name", "address"],
          additionalProperties: false,
          properties: {
            token: { type: "string", minLength: 1, maxLength: 256 },
            csr: { type: "string", minLength: 1, maxLength: 16384 },
            name: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$" },
            address: { type: "string", minLength: 3, maxLength: 260, pattern: ADDRESS },
            capacity: { type: "object", additionalProperties: true },
          },
        },
        response: {
          201: {
            type: "object",
            required: ["replicatorId", "replicatorName", "certificatePem", "caPem"],
            properties: {
              replicatorId: { type: "string" },
              replicatorName: { type: "string" },
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
      const r = await registerReplicator(ctx.database, ctx.ca, ctx.clock, request.body);
      request.actor = { kind: "client", role: "replicator", subjectId: r.replicatorId, serial: "" };
      await auditRequest(ctx, request, "replicator.register", `replicator:${r.replicatorId}`, "ok", {
        tokenId: r.tokenId,
        name: r.replicatorName,
        address: request.body.address,
        retry: !r.created,
      });
      return reply.code(201).send(r);
    },
  );

  app.post<{ Body: ReplicatorReport }>(
    "/api/v1/replicator/heartbeat",
    {
      onRequest: replicator,
      config: { action: "replicator.heartbeat" },
      // Hundreds a second: no access-log lines for them (refusals are in the audit log).
      logLevel: "warn",
      schema: {
        summary: "a replicator reports; the answer lists the servers assigned to it",
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            state: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Z][A-Z0-9_]*$" },
            address: { type: "string", minLength: 3, maxLength: 260, pattern: ADDRESS },
            capacity: { type: "object", additionalProperties: true },
            ingest: {
              type: "object",
              required: ["startedAt", "receivedBytes", "storedBytes", "sessions"],
              additionalProperties: false,
              properties: {
                startedAt: {
                  type: "string",
                  minLength: 20,
                  maxLength: 40,
                  pattern: "^[0-9]{4}-[0-9]{2}-[0-9]{2}T",
                },
                receivedBytes: { type: "integer", minimum: 0 },
                storedBytes: { type: "integer", minimum: 0 },
                sessions: { type: "integer", minimum: 0 },
                servers: {
                  type: "object",
                  description: "bytes applied by server name since startedAt",
                  maxProperties: 10000,
                  additionalProperties: { type: "integer", minimum: 0 },
                },
              },
            },
            pits: {
              type: "array",
              maxItems: 100,
              items: {
                type: "object",
                required: ["serverId", "pitId"],
                additionalProperties: false,
                properties: {
                  serverId: { type: "string", minLength: 1, maxLength: 64 },
                  pitId: { type: "string", pattern: "^[0-9a-f]{24}$" },
                },
              },
            },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["replicatorId", "heartbeatSeconds", "servers"],
            properties: {
              replicatorId: { type: "string" },
              heartbeatSeconds: { type: "integer" },
              servers: { type: "array", items: { type: "string" } },
              /** The reported PITs the replicator may forget (recordReplicatorPits). */
              pitsRecorded: { type: "array", items: { type: "string" } },
            },
          },
          400: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "replicator route");
      const id = request.actor.subjectId;
      if (!(await recordReplicatorHeartbeat(ctx.database, ctx.clock, id, request.body))) throw notFound(id);
      // Accepted heartbeats are not audited (see heartbeats.ts); refusals are, by the app.
      request.audited = true;
      const assigned = await assignments(ctx.database);
      const pitsRecorded =
        request.body.pits === undefined
          ? undefined
          : await recordReplicatorPits(ctx.database, ctx.clock, ctx.repo, request.body.pits, request.log);
      return {
        replicatorId: id,
        heartbeatSeconds: Math.max(1, Math.floor(ctx.config.heartbeatTimeoutSeconds / 4)),
        servers: [...assigned]
          .filter(([, r]) => r === id)
          .map(([s]) => s)
          .sort(),
        ...(pitsRecorded !== undefined ? { pitsRecorded } : {}),
      };
    },
  );

  app.get(
    "/api/v1/replicator/config",
    {
      onRequest: replicator,
      config: { action: "replicator.config" },
      schema: {
        summary:
          "what a separate replicator needs to serve: the repository, its key, and a server certificate for its address",
        response: {
          200: {
            type: "object",
            required: [
              "replicatorId",
              "repository",
              "repositoryKey",
              "serverCertificatePem",
              "serverKeyPem",
              "caPem",
            ],
            properties: {
              replicatorId: { type: "string" },
              repository: { type: "string" },
              repositoryKey: { type: "string" },
              serverCertificatePem: { type: "string" },
              serverKeyPem: { type: "string" },
              caPem: { type: "string" },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "replicator route");
      const id = request.actor.subjectId;
      const row = await ctx.database.db
        .selectFrom("replicators")
        .select(["address", "decommissioned_at"])
        .where("id", "=", id)
        .executeTakeFirst();
      if (!row || row.decommissioned_at !== null) throw notFound(id);
      const host = row.address.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
      const cert = await issueServerCert(ctx.ca, { hostnames: [host], clock: ctx.clock });
      const key = await readFile(dataPaths(ctx.config.dataDir).repoKey);
      // The key travels only over this mutually authenticated connection; the audit names the fact, not the key.
      await auditRequest(ctx, request, "replicator.config", `replicator:${id}`, "ok", { host });
      return {
        replicatorId: id,
        repository: ctx.config.repository,
        repositoryKey: key.toString("base64"),
        serverCertificatePem: cert.certPem,
        serverKeyPem: cert.keyPem,
        caPem: ctx.ca.certPem,
      };
    },
  );

  app.get(
    "/api/v1/replicator/assignments",
    {
      onRequest: replicator,
      config: { action: "replicator.assignments" },
      logLevel: "warn",
      schema: {
        summary: "the servers assigned to the calling replicator, with their names",
        response: {
          200: {
            type: "object",
            required: ["servers"],
            properties: {
              servers: {
                type: "array",
                items: {
                  type: "object",
                  required: ["id", "name"],
                  properties: { id: { type: "string" }, name: { type: "string" } },
                },
              },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "replicator route");
      request.audited = true; // a read, polled
      const ids = await assignedServerIds(ctx.database, request.actor.subjectId);
      const rows = ids.length
        ? await ctx.database.db
            .selectFrom("servers")
            .select(["id", "name"])
            .where("id", "in", ids)
            // A fenced server (failed over, receiving a failback) is served by no separate replicator:
            // its stream there is released and a new one refused (failback.md, "Split brain").
            .where("fenced", "is", null)
            .orderBy("name")
            .execute()
        : [];
      return { servers: rows };
    },
  );

  app.post<{ Body: { serverId: string; headEpoch: number } }>(
    "/api/v1/replicator/epoch",
    {
      onRequest: replicator,
      config: { action: "replicator.epoch" },
      logLevel: "warn",
      schema: {
        summary:
          "the epoch the calling replicator writes a server's replica with, when it accepts the stream (raised if another replicator held it)",
        body: {
          type: "object",
          required: ["serverId", "headEpoch"],
          additionalProperties: false,
          properties: {
            serverId: { type: "string", minLength: 1, maxLength: 253 },
            headEpoch: { type: "integer", minimum: 0 },
          },
        },
        response: {
          200: { type: "object", required: ["epoch"], properties: { epoch: { type: "integer" } } },
          400: errorSchema,
          409: errorSchema,
          ...errors,
        },
      },
    },
    async (request) => {
      if (request.actor.kind !== "client")
        throw httpError(401, "NET_CLIENT_CERT_REQUIRED", "replicator route");
      request.audited = true; // once per accepted stream; the epoch is in the replica's head
      const id = request.actor.subjectId;
      const { serverId, headEpoch } = request.body;
      const notAssigned = () =>
        httpError(
          409,
          "REPLICATOR_NOT_ASSIGNED",
          `server ${serverId} is not assigned to replicator ${id}`,
          "the agent reads its replicator's address from its settings and reconnects there",
        );
      if ((await assignments(ctx.database)).get(serverId) !== id) throw notAssigned();
      const epoch = await takeReplicaEpoch(ctx.database, ctx.clock, serverId, id, headEpoch);
      if (epoch === undefined) throw notAssigned();
      return { epoch };
    },
  );

  app.get(
    "/api/v1/replicators",
    {
      onRequest: viewer,
      schema: {
        summary: "list replicators",
        response: {
          200: {
            type: "object",
            required: ["replicators"],
            properties: { replicators: { type: "array", items: replicatorSchema } },
          },
          ...errors,
        },
      },
    },
    async () => {
      const rows = await ctx.database.db
        .selectFrom("replicators")
        .selectAll()
        .where("decommissioned_at", "is", null)
        .orderBy("name")
        .execute();
      const assigned = await assignments(ctx.database);
      return { replicators: rows.map((r) => view(r, assigned)) };
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/replicators/:id",
    {
      onRequest: viewer,
      schema: {
        summary: "one replicator, by id or name",
        params: idParams,
        response: { 200: replicatorSchema, ...errors },
      },
    },
    async (request) => {
      const key = request.params.id;
      const row = await ctx.database.db
        .selectFrom("replicators")
        .selectAll()
        .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
        .executeTakeFirst();
      if (row === undefined) throw notFound(key);
      return view(row, await assignments(ctx.database));
    },
  );

  for (const [verb, drained] of [
    ["drain", 1],
    ["undrain", 0],
  ] as const) {
    app.post<{ Params: { id: string } }>(
      `/api/v1/replicators/:id/${verb}`,
      {
        onRequest: admin,
        config: { action: `replicator.${verb}` },
        schema: {
          summary:
            verb === "drain"
              ? "drain a replicator: the pool moves its servers to other replicators and gives it no new ones"
              : "end a drain: the replicator takes servers from the pool again",
          params: idParams,
          body: { type: "object", additionalProperties: false, properties: {} },
          response: { 200: replicatorSchema, ...errors },
        },
      },
      async (request) => {
        const key = request.params.id;
        const row = await ctx.database.db
          .selectFrom("replicators")
          .selectAll()
          .where((eb) => eb.or([eb("id", "=", key), eb("name", "=", key)]))
          .where("decommissioned_at", "is", null)
          .executeTakeFirst();
        if (row === undefined) throw notFound(key);
        request.auditTarget = `replicator:${row.id}`;
        await ctx.database.db.updateTable("replicators").set({ drained }).where("id", "=", row.id).execute();
        await auditRequest(ctx, request, `replicator.${verb}`, `replicator:${row.id}`, "ok", {
          name: row.name,
        });
        return view({ ...row, drained }, await assignments(ctx.database));
      },
    );
  }

  decommissionRoute(app, ctx, "replicator", {
    admin,
    summary: "decommission a replicator: revoke its certificates",
    notFound,
  });
}
