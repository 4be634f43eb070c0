/**
 * Shared pieces of the net tests: a fastify server on 127.0.0.1 (port 0)
 * built with serverTlsOptions, whose /whoami route answers with the caller's
 * verified identity or the refusal's {code, message, hint} and status.
 */
import type { TLSSocket } from "node:tls";
import Fastify, { type FastifyInstance } from "fastify";
import { LifeboatError, systemClock, type Clock } from "../../src/base/index.js";
import {
  type CaCredentials,
  issueServerCert,
  serverTlsOptions,
  verifyClientCertificate,
} from "../../src/net/index.js";

export interface TestServer {
  app: FastifyInstance;
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startServer(
  ca: CaCredentials,
  opts: {
    hostnames?: string[];
    revoked?: Set<string>;
    clock?: Clock;
    /** Replaces the certificate chain and key the server presents (for impostors). */
    present?: { cert: string; key: string };
  } = {},
): Promise<TestServer> {
  const server = await issueServerCert(ca, { hostnames: opts.hostnames ?? ["127.0.0.1", "localhost"] });
  const https = serverTlsOptions({ certPem: server.certPem, keyPem: server.keyPem, caPem: ca.certPem });
  if (opts.present) Object.assign(https, opts.present);
  const app = Fastify({ https });
  const revoked = opts.revoked ?? new Set<string>();
  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof LifeboatError) {
      const status = (err as { statusCode?: number }).statusCode ?? 500;
      return reply.code(status).send(err.toJSON());
    }
    return reply.code(500).send({ code: "INTERNAL", message: "internal error", hint: "" });
  });
  app.get("/healthz", () => ({ ok: true }));
  app.get("/whoami", async (req) => {
    const identity = await verifyClientCertificate(req.raw.socket as TLSSocket, {
      caPem: ca.certPem,
      isRevoked: (serial) => revoked.has(serial),
      clock: opts.clock ?? systemClock,
    });
    return {
      ...identity,
      notBefore: identity.notBefore.toISOString(),
      notAfter: identity.notAfter.toISOString(),
      resumed: (req.raw.socket as TLSSocket).isSessionReused(),
    };
  });
  app.post("/conflict", () => {
    throw Object.assign(
      new LifeboatError("SERVER_EXISTS", "a server named db1 exists", { hint: "choose another name" }),
      { statusCode: 409 },
    );
  });
  app.get("/slow", async () => {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return { late: true };
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return { app, url: `https://127.0.0.1:${port}`, port, close: () => app.close() };
}

/** Runs `fn` and returns what it threw, failing when it did not throw. */
export async function thrown(fn: () => Promise<unknown>): Promise<LifeboatError> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof LifeboatError) return err;
    throw new Error(`expected a LifeboatError, got ${String(err)}`, { cause: err });
  }
  throw new Error("expected an error, but it succeeded");
}
