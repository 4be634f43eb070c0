import type {} from "@fastify/rate-limit";
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { TLSSocket } from "node:tls";
import { requireClient } from "../auth.js";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";
import { effectiveSettings } from "../settings.js";
import { checkToken } from "../tokens.js";

/** The largest body the throughput test may send; the doctor sends a few MiB. */
export const THROUGHPUT_MAX_BYTES = 8 * 1024 * 1024;
/** The token check names at most this many data addresses (the doctor tries each). */
const MAX_DATA_ADDRESSES = 8;

/**
 * Routes the connectivity doctor (`lifeboat doctor`) uses from a source
 * server before anything is installed. Both are public (no API key) and
 * rate-limited per client address like registration; neither changes state.
 *
 * - POST /api/v1/tokens/check: the state of an install token (valid, expired,
 *   revoked, used, unknown) without spending it, and for a valid agent token
 *   the data addresses its server would replicate to (empty: this endpoint).
 * - POST /api/v1/doctor/throughput: reads and discards up to 8 MiB
 *   (application/octet-stream), for a client holding a valid install token
 *   (`Authorization: Bearer <token>`) or an agent certificate.
 */
export function doctorRoutes(app: FastifyInstance, ctx: AppContext): void {
  const discarded = new WeakMap<FastifyRequest, number>();
  const rateLimit = { max: ctx.config.registerRateLimitPerMinute, timeWindow: 60_000 };
  app.post<{ Body: { token: string; role?: "agent" | "replicator" } }>(
    "/api/v1/tokens/check",
    {
      config: { rateLimit },
      schema: {
        summary: "the state of an install token, without spending it",
        body: {
          type: "object",
          required: ["token"],
          additionalProperties: false,
          properties: {
            token: { type: "string", minLength: 1, maxLength: 256 },
            role: { type: "string", enum: ["agent", "replicator"], default: "agent" },
          },
        },
        response: {
          200: {
            type: "object",
            required: ["state"],
            properties: {
              state: { type: "string", enum: ["valid", "expired", "revoked", "used", "unknown"] },
              expiresAt: { type: "string", format: "date-time" },
              dataAddresses: { type: "array", items: { type: "string" } },
            },
          },
          400: errorSchema,
          429: errorSchema,
        },
      },
    },
    async (request) => {
      const role = request.body.role ?? "agent";
      const r = await checkToken(ctx.database, ctx.clock, request.body.token, role);
      if (r.state !== "valid") return { state: r.state };
      return {
        state: r.state,
        expiresAt: new Date(r.expiresAt!).toISOString(),
        dataAddresses: role === "agent" ? await templateDataAddresses(ctx) : [],
      };
    },
  );

  // The body parser for the throughput test lives in its own scope: nowhere else is a raw body taken.
  void app.register((scope, _opts, done) => {
    scope.addContentTypeParser("application/octet-stream", (request, payload, next) => {
      let bytes = 0;
      payload.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > THROUGHPUT_MAX_BYTES) {
          payload.destroy();
          next(
            httpError(
              413,
              "REQUEST_TOO_LARGE",
              `the throughput test takes at most ${THROUGHPUT_MAX_BYTES} bytes`,
              "send less",
            ),
            undefined,
          );
        }
      });
      // The body the route sees is empty (it is gone); how much there was is kept aside.
      payload.once("end", () => {
        discarded.set(request, bytes);
        next(null, "");
      });
      payload.once("error", (err) => next(err, undefined));
    });
    const agentCert = requireClient(ctx.database, ctx.clock, ctx.ca.certPem, "agent");
    scope.post<{ Body: string }>(
      "/api/v1/doctor/throughput",
      {
        config: { rateLimit },
        logLevel: "warn",
        onRequest: async (request) => {
          const header = request.headers.authorization;
          if (header === undefined && hasClientCert(request)) return agentCert(request);
          const m = header === undefined ? null : /^Bearer\s+(\S+)$/i.exec(header);
          const state = m ? (await checkToken(ctx.database, ctx.clock, m[1]!, "agent")).state : undefined;
          if (state !== "valid")
            throw httpError(
              401,
              "AUTH_REQUIRED",
              "the throughput test needs a valid install token or an agent certificate",
              "send `Authorization: Bearer <install token>` (lifeboat doctor --token-file F)",
            );
        },
        schema: {
          summary: "read and discard a body of up to 8 MiB (the doctor's throughput test)",
          consumes: ["application/octet-stream"],
          body: { type: "string", description: "any bytes, at most 8 MiB; they are discarded" },
          response: {
            200: { type: "object", required: ["bytes"], properties: { bytes: { type: "integer" } } },
            400: errorSchema,
            401: errorSchema,
            403: errorSchema,
            413: errorSchema,
            415: errorSchema,
            429: errorSchema,
          },
        },
      },
      (request) => ({ bytes: discarded.get(request) ?? 0 }),
    );
    done();
  });
}

function hasClientCert(request: FastifyRequest): boolean {
  const socket = request.raw.socket as Partial<TLSSocket>;
  return typeof socket.getPeerCertificate === "function" && Boolean(socket.getPeerCertificate()?.raw);
}

/**
 * Where a server registered now would send its data: the replicator the
 * template's replicatorId names, else every replicator the pool could choose
 * (up, not drained, not decommissioned; replicator-pool.ts), else nothing,
 * meaning this endpoint's own port (the embedded replicator).
 */
async function templateDataAddresses(ctx: AppContext): Promise<string[]> {
  const { settings } = await effectiveSettings(ctx.database, null, "replication");
  const id = typeof settings.replicatorId === "string" ? settings.replicatorId : null;
  let q = ctx.database.db
    .selectFrom("replicators")
    .select("address")
    .where("decommissioned_at", "is", null)
    .orderBy("name")
    .limit(MAX_DATA_ADDRESSES);
  if (id !== null) q = q.where("id", "=", id);
  else
    q = q
      .where("drained", "=", 0)
      .where("state", "!=", "DISCONNECTED")
      .where("last_seen_at", ">=", ctx.clock.now() - ctx.config.heartbeatTimeoutSeconds * 1000);
  return (await q.execute()).map((r) => r.address);
}
