import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Dispatcher } from "undici";
import { initServer } from "../../src/control/init.js";
import { type RunningServer, type StartOptions, startServer } from "../../src/control/start.js";
import type { Database } from "../../src/control/db/index.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { connectionUrl } from "../support/databases.js";
import { type CapturedLogs, captureLogger } from "./helpers.js";

export interface Client {
  id: string;
  keyPem: string;
  certificatePem: string;
  dispatcher: Dispatcher & { close(): Promise<void> };
}

export interface TlsServer {
  server: RunningServer;
  url: string;
  dataDir: string;
  caPem: string;
  adminKey: string;
  logs: CapturedLogs;
  /** No client certificate. */
  operator: Dispatcher & { close(): Promise<void> };
  admin: { authorization: string };
  /** fetchJson as an admin. */
  adminCall<T>(p: string, opts?: { method?: "GET" | "POST" | "PUT" | "DELETE"; body?: unknown }): Promise<T>;
  token(role: "agent" | "replicator", uses?: number): Promise<string>;
  registerAgent(token: string, hostname: string): Promise<Client>;
  registerReplicator(token: string, name: string, address?: string): Promise<Client>;
  /** A dispatcher presenting `cert` with `keyPem`. */
  as(keyPem: string, certificatePem: string): Dispatcher & { close(): Promise<void> };
  close(): Promise<void>;
}

/** `server init` into dataDir on the test's database, started on a loopback port. */
export async function startTlsServer(
  database: Database,
  dataDir: string,
  opts: Omit<StartOptions, "listen" | "logger" | "handleSignals"> & { heartbeatTimeoutSeconds?: number } = {},
): Promise<TlsServer> {
  const init = await initServer({ dataDir, databaseUrl: await connectionUrl(database) });
  if (opts.heartbeatTimeoutSeconds !== undefined) {
    const file = path.join(dataDir, "config.json");
    const config = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
    config.heartbeatTimeoutSeconds = opts.heartbeatTimeoutSeconds;
    await (await import("node:fs/promises")).writeFile(file, JSON.stringify(config));
  }
  const { logger, logs } = captureLogger();
  const server = await startServer(dataDir, {
    ...(opts.clock ? { clock: opts.clock } : {}),
    listen: "127.0.0.1:0",
    logger,
    handleSignals: false,
  });
  const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
  const dispatchers: { close(): Promise<void> }[] = [];
  const operator = createApiDispatcher({ caPem });
  dispatchers.push(operator);
  const admin = { authorization: `Bearer ${init.adminApiKey}` };
  const as = (keyPem: string, certificatePem: string) => {
    const d = createApiDispatcher({ caPem, clientCertPem: certificatePem, clientKeyPem: keyPem });
    dispatchers.push(d);
    return d;
  };
  const t: TlsServer = {
    server,
    url: server.url,
    dataDir,
    caPem,
    adminKey: init.adminApiKey,
    logs,
    operator,
    admin,
    adminCall: (p, o = {}) => fetchJson(operator, `${server.url}${p}`, { ...o, headers: admin }),
    async token(role, uses = 1) {
      const r = await t.adminCall<{ token: string }>("/api/v1/tokens", {
        method: "POST",
        body: { role, uses },
      });
      return r.token;
    },
    async registerAgent(token, hostname) {
      const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: hostname });
      const r = await fetchJson<{ serverId: string; certificatePem: string }>(
        operator,
        `${server.url}/api/v1/register`,
        { body: { token, csr: csrPem, hostname } },
      );
      return {
        id: r.serverId,
        keyPem,
        certificatePem: r.certificatePem,
        dispatcher: as(keyPem, r.certificatePem),
      };
    },
    async registerReplicator(token, name, address = "10.0.0.9:443") {
      const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: name });
      const r = await fetchJson<{ replicatorId: string; certificatePem: string }>(
        operator,
        `${server.url}/api/v1/replicator/register`,
        { body: { token, csr: csrPem, name, address, capacity: { bytes: 1e12 } } },
      );
      return {
        id: r.replicatorId,
        keyPem,
        certificatePem: r.certificatePem,
        dispatcher: as(keyPem, r.certificatePem),
      };
    },
    as,
    async close() {
      for (const d of dispatchers) await d.close();
      await server.close();
    },
  };
  return t;
}
