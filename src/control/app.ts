import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import Fastify, { type FastifyInstance } from "fastify";
import type { SecureContextOptions, TlsOptions } from "node:tls";
import { appendAudit } from "./audit.js";
import { actorName } from "./auth.js";
import type { AppContext } from "./context.js";
import { installErrorHandling } from "./http-error.js";
import { certificateRoutes } from "./routes/certificates.js";
import { installSecurityHeaders } from "./routes/console-static.js";
import { healthRoutes } from "./routes/health.js";
import { jobRoutes } from "./routes/jobs.js";
import { pitRoutes } from "./routes/pits.js";
import { replicatorRoutes } from "./routes/replicators.js";
import { registerRoutes } from "./routes/register.js";
import { serverRoutes } from "./routes/servers.js";
import { tokenRoutes } from "./routes/tokens.js";

export interface BuildAppOptions extends AppContext {
  /** TLS options (serverTlsOptions()) to serve HTTPS; without, plain HTTP for fastify.inject tests. */
  https?: TlsOptions & SecureContextOptions;
  /** The web console's built files (default: dist/console of this build). */
  consoleDir?: string;
}

const STATE_CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * The control plane's HTTP app, not listening yet: tests drive it with
 * fastify.inject, startServer() listens with TLS. Every route has request and
 * response schemas (they make /api/v1/openapi.json); errors leave through the
 * one handler in http-error.ts; every state-changing request is audited —
 * by the route when it succeeds, here (result "denied" for 401/403, else
 * "failed") when it does not.
 */
export async function buildApp(opts: BuildAppOptions): Promise<FastifyInstance> {
  const ctx: AppContext = {
    database: opts.database,
    config: opts.config,
    ca: opts.ca,
    clock: opts.clock,
    logger: opts.logger,
    ...(opts.jobs ? { jobs: opts.jobs } : {}),
    ...(opts.repo ? { repo: opts.repo } : {}),
  };
  const app = Fastify({
    loggerInstance: opts.logger,
    bodyLimit: ctx.config.bodyLimitBytes,
    // Schema violations are refused, never quietly repaired.
    ajv: {
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false },
    },
    ...(opts.https ? { https: opts.https } : {}),
  }) as unknown as FastifyInstance;

  app.decorateRequest("actor", null as unknown as never);
  app.addHook("onRequest", (request, _reply, done) => {
    request.actor = { kind: "anonymous" };
    done();
  });
  app.addHook("onSend", async (request, reply, payload) => {
    const action = request.routeOptions.config.action;
    if (
      action === undefined ||
      !STATE_CHANGING.has(request.method) ||
      request.audited ||
      reply.statusCode < 400
    )
      return payload;
    const code = tryCode(payload);
    try {
      await appendAudit(
        ctx.database,
        {
          actor: actorName(request.actor),
          action,
          target: request.auditTarget ?? "",
          source: request.ip,
          result: reply.statusCode === 401 || reply.statusCode === 403 ? "denied" : "failed",
          details: { status: reply.statusCode, ...(code ? { code } : {}) },
        },
        ctx.clock,
      );
    } catch (err) {
      request.log.error({ err }, "could not write the audit record of a refused request");
    }
    return payload;
  });

  installErrorHandling(app);
  installSecurityHeaders(app);
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: { title: "Lifeboat control plane", version: "1" },
      components: {
        securitySchemes: { apiKey: { type: "http", scheme: "bearer" } },
      },
    },
  });
  await app.register(rateLimit, { global: false });
  healthRoutes(app, ctx);
  tokenRoutes(app, ctx);
  registerRoutes(app, ctx);
  serverRoutes(app, ctx);
  (await import("./routes/settings.js")).settingsRoutes(app, ctx);
  replicatorRoutes(app, ctx);
  certificateRoutes(app, ctx);
  jobRoutes(app, ctx);
  pitRoutes(app, ctx);
  (await import("./routes/commands.js")).commandRoutes(app, ctx);
  (await import("./routes/launches.js")).launchRoutes(app, ctx);
  (await import("./routes/plans.js")).planRoutes(app, ctx);
  (await import("./routes/metrics.js")).metricsRoutes(app, ctx);
  (await import("./routes/events.js")).eventRoutes(app, ctx);
  (await import("./routes/webhooks.js")).webhookRoutes(app, ctx);
  // The web console: its page and assets, sign-in, and the read APIs its pages need.
  (await import("./routes/console-static.js")).consoleStaticRoutes(app, opts.consoleDir);
  (await import("./routes/session.js")).sessionRoutes(app, ctx);
  (await import("./routes/console.js")).consoleRoutes(app, ctx);
  (await import("./routes/downloads.js")).downloadRoutes(app, ctx);
  (await import("./routes/doctor.js")).doctorRoutes(app, ctx);
  (await import("./routes/failback.js")).failbackRoutes(app, ctx);
  (await import("./routes/api-keys.js")).apiKeyRoutes(app, ctx);
  (await import("./routes/repository.js")).repositoryRoutes(app, ctx);
  return app;
}

function tryCode(payload: unknown): string | undefined {
  if (typeof payload !== "string") return undefined;
  try {
    const code = (JSON.parse(payload) as { code?: unknown }).code;
    return typeof code === "string" ? code : undefined;
  } catch {
    return undefined;
  }
}
