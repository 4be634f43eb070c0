import type { FastifyInstance } from "fastify";
import { requireOperator } from "../auth.js";
import type { AppContext } from "../context.js";
import { type IngestSource, METRICS_CONTENT_TYPE, RequestMetrics, scrapeMetrics } from "../metrics.js";
import { authErrors } from "./schemas.js";

/**
 * GET /metrics: Prometheus metrics in the text format, for an API key of
 * any role as `Authorization: Bearer` (Prometheus: `authorization:
 * credentials_file:` holding a viewer key). Also times every request of this
 * app into lifeboat_http_request_duration_seconds, labelled with the route's
 * pattern ("unmatched" for a URL no route serves), leaving out streams
 * (server-sent events, whose duration is the client's choice).
 */
const ingestSources = new WeakMap<FastifyInstance, IngestSource>();

/** The embedded replicator whose ingest `app`'s /metrics reports (server start sets it once it runs one). */
export function reportIngest(app: FastifyInstance, source: IngestSource): void {
  ingestSources.set(app, source);
}

export function metricsRoutes(app: FastifyInstance, ctx: AppContext): void {
  const requests = new RequestMetrics();
  app.addHook("onResponse", (request, reply, done) => {
    const type = reply.getHeader("content-type");
    if (typeof type !== "string" || !type.startsWith("text/event-stream"))
      requests.observe(
        request.method,
        request.routeOptions.url ?? "unmatched",
        reply.statusCode,
        reply.elapsedTime / 1000,
      );
    done();
  });

  app.get(
    "/metrics",
    {
      onRequest: requireOperator(ctx.database, ctx.clock, "viewer"),
      // Scraped every few seconds: no access-log lines for it.
      logLevel: "warn",
      schema: {
        summary: "Prometheus metrics (text format 0.0.4)",
        produces: ["text/plain"],
        response: { 200: { type: "string" }, ...authErrors },
      },
    },
    async (_request, reply) => {
      const text = await scrapeMetrics({
        database: ctx.database,
        clock: ctx.clock,
        heartbeatTimeoutSeconds: ctx.config.heartbeatTimeoutSeconds,
        requests,
        ...(ingestSources.has(app) ? { ingest: ingestSources.get(app)! } : {}),
      });
      return reply.type(METRICS_CONTENT_TYPE).send(text);
    },
  );
}
