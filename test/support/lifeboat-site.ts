/**
 * A recovery site for end-to-end tests: a real `server start` (control
 * plane and embedded replicator on one TLS port) in a temporary data
 * directory, and registered agent identities for it.
 */
import { readFile } from "node:fs/promises";
import type { AgentSettings } from "../../src/agent/index.js";
import path from "node:path";
import { initServer } from "../../src/control/init.js";
import { startServer } from "../../src/control/start.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../../src/net/index.js";
import { openRepository, type Repository } from "../../src/store/index.js";
import { connectWire } from "../../src/wire/index.js";

/** Agent settings for engine tests: no scheduled PITs, the defaults otherwise; `over` replaces fields. */
export function agentSettings(over: Partial<AgentSettings> = {}): AgentSettings {
  return {
    pitIntervalSeconds: 0,
    freezeCapMs: 2000,
    lagThresholdSeconds: 30,
    stallSeconds: 300,
    bandwidthMbps: 0,
    tracker: "auto",
    ...over,
  };
}

export interface AgentIdentity {
  serverId: string;
  serverName: string;
  certPem: string;
  keyPem: string;
}

export interface Site {
  dataDir: string;
  url: string;
  port: number;
  caPem: string;
  adminKey: string;
  /** Registers an agent with a fresh install token. */
  register(hostname: string): Promise<AgentIdentity>;
  /** A wire connection to the embedded replicator with `who`'s certificate. */
  connect(who: AgentIdentity): ReturnType<typeof connectWire>;
  /** Opens the server's repository (the caller closes it). */
  openRepo(): Promise<Repository>;
  /** Calls the operator API with the admin key. */
  api<T>(p: string, opts?: { method?: string; body?: unknown }): Promise<T>;
  close(): Promise<void>;
}

/**
 * `hostnames`: the names and addresses in the server's TLS certificate (default localhost and
 * 127.0.0.1); `repository`: where the repository goes (default DATA/repo), a directory or s3:// URL.
 */
export async function startSite(
  dir: string,
  opts: { hostnames?: string[]; repository?: string } = {},
): Promise<Site> {
  const dataDir = path.join(dir, "server");
  const init = await initServer({
    dataDir,
    ...(opts.hostnames ? { hostnames: opts.hostnames } : {}),
    ...(opts.repository ? { repository: opts.repository } : {}),
  });
  const server = await startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false });
  const caPem = await readFile(path.join(dataDir, "ca.pem"), "utf8");
  const operator = createApiDispatcher({ caPem });
  const api = <T>(p: string, o: { method?: string; body?: unknown } = {}): Promise<T> =>
    fetchJson<T>(operator, `${server.url}${p}`, {
      ...(o.method ? { method: o.method } : {}),
      ...(o.body !== undefined ? { body: o.body } : {}),
      headers: { authorization: `Bearer ${init.adminApiKey}` },
    });
  return {
    dataDir,
    url: server.url,
    port: server.port,
    caPem,
    adminKey: init.adminApiKey,
    api,
    async register(hostname) {
      const token = await api<{ token: string }>("/api/v1/tokens", {
        method: "POST",
        body: { role: "agent", uses: 1 },
      });
      const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: hostname });
      const d = createApiDispatcher({ caPem });
      try {
        const r = await fetchJson<{ serverId: string; serverName: string; certificatePem: string }>(
          d,
          `${server.url}/api/v1/register`,
          { body: { token: token.token, csr: csrPem, hostname } },
        );
        return { serverId: r.serverId, serverName: r.serverName, certPem: r.certificatePem, keyPem };
      } finally {
        await d.close();
      }
    },
    connect: (who) =>
      connectWire({ host: "127.0.0.1", port: server.port, caPem, certPem: who.certPem, keyPem: who.keyPem }),
    openRepo: () => openRepository(init.repository, { keyFile: path.join(dataDir, "keys", "repo.key") }),
    async close() {
      await operator.close();
      await server.close();
    },
  };
}
