/**
 * `lifeboat replicator start`: a replicator in a process of its own, for
 * sites that spread replication over several hosts. It registers once like
 * an agent (an install token of role `replicator` and a CSR; its identity is
 * kept in the data directory), then over its mutual-TLS identity receives
 * what it needs to serve — the repository's location and key, a server
 * certificate for its registered address — and the servers assigned to it.
 * Agents of those servers connect to it with their own certificates; any
 * other agent is refused. Revoked certificates are refused by the control
 * plane's revocation list.
 *
 * Data directory D (0700): D/replicator.key (0600), D/replicator.pem,
 * D/ca.pem, D/replicator.json (id, name, address), D/keys/repo.key (0600).
 */
import { promises as fs } from "node:fs";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { createServer } from "node:tls";
import type { Agent } from "undici";
import {
  type Clock,
  LifeboatError,
  isLifeboatError,
  type Logger,
  silentLogger,
  systemClock,
  writeFileAtomic,
} from "../base/index.js";
import {
  createApiDispatcher,
  createRevocationList,
  fetchJson,
  generateKeyAndCsr,
  verifyClientCertificate,
} from "../net/index.js";
import { openRepository } from "../store/index.js";
import { attachWire, wireConnectionHandler } from "../wire/index.js";
import { Replicator } from "./service.js";

/** PITs one heartbeat reports (the control plane reads each from the repository). */
const PITS_PER_HEARTBEAT = 20;
/** PITs kept for a control plane that does not answer; older ones wait for `store reindex`. */
const MAX_PENDING_PITS = 1000;

export interface StandaloneOptions {
  /** The control plane, https://host:port. */
  endpoint: string;
  /** The CA certificate to trust (PEM). */
  caPem: string;
  dataDir: string;
  /** host:port to listen on. */
  listen: string;
  /** host:port agents reach it at (default: the listen address, with the port it got). */
  address?: string;
  /** Unique among replicators (default: the host name). */
  name?: string;
  /** An install token of role replicator; needed only the first time. */
  token?: string;
  clock?: Clock;
  logger?: Logger;
}

interface Identity {
  replicatorId: string;
  name: string;
  address: string;
}

export interface StandaloneReplicator {
  replicatorId: string;
  address: string;
  port: number;
  close(): Promise<void>;
}

export async function startStandaloneReplicator(opts: StandaloneOptions): Promise<StandaloneReplicator> {
  const log = opts.logger ?? silentLogger;
  const clock = opts.clock ?? systemClock;
  const endpoint = opts.endpoint.replace(/\/+$/, "");
  const D = opts.dataDir;
  await fs.mkdir(path.join(D, "keys"), { recursive: true, mode: 0o700 });
  await fs.chmod(D, 0o700);
  const files = {
    key: path.join(D, "replicator.key"),
    cert: path.join(D, "replicator.pem"),
    identity: path.join(D, "replicator.json"),
    repoKey: path.join(D, "keys", "repo.key"),
  };
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(opts.listen);
  if (!m)
    throw new LifeboatError("USAGE", `--listen ${opts.listen} is not host:port`, {
      hint: "e.g. 0.0.0.0:8443",
      exitCode: 2,
    });

  // Listen first: the address registered must carry the port actually bound. Handshakes
  // fail until the server certificate is set below.
  const server = createServer({
    minVersion: "TLSv1.3",
    requestCert: true,
    rejectUnauthorized: false,
    ca: opts.caPem,
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(m[2]), m[1], () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const address = opts.address ?? `${m[1] === "0.0.0.0" ? "127.0.0.1" : m[1]}:${port}`;

  let identity: Identity;
  let keyPem: string;
  let certPem: string;
  try {
    ({ identity, keyPem, certPem } = await registered(opts, endpoint, files, address));
  } catch (err) {
    server.close();
    throw err;
  }
  const dispatcher: Agent = createApiDispatcher({
    caPem: opts.caPem,
    clientCertPem: certPem,
    clientKeyPem: keyPem,
    clock,
  });
  const call = <T>(p: string, o: { method?: "GET" | "POST"; body?: unknown } = {}) =>
    fetchJson<T>(dispatcher, `${endpoint}${p}`, o);
  const config = await call<{
    repository: string;
    repositoryKey: string;
    serverCertificatePem: string;
    serverKeyPem: string;
  }>("/api/v1/replicator/config");
  await writeFileAtomic(files.repoKey, Buffer.from(config.repositoryKey, "base64"), { mode: 0o600 });
  server.setSecureContext({
    cert: config.serverCertificatePem,
    key: config.serverKeyPem,
    ca: opts.caPem,
    minVersion: "TLSv1.3",
  });
  const repo = await openRepository(config.repository, { keyFile: files.repoKey, clock });

  const assigned = new Map<string, string>();
  const refresh = async () => {
    const r = await call<{ servers: { id: string; name: string }[] }>("/api/v1/replicator/assignments");
    assigned.clear();
    for (const s of r.servers) assigned.set(s.id, s.name);
  };
  await refresh();
  // PITs made here go to the control plane's catalog with the next heartbeat, which a PIT
  // brings forward; a heartbeat that fails keeps them for the one after (at most MAX_PENDING_PITS).
  const pendingPits = new Map<string, string>(); // PIT id -> server id
  let wake: (() => void) | undefined;
  let newPit = false;
  // A control plane older than these reports refuses them (REQUEST_INVALID): heartbeats go on without.
  let plain = false;
  const startedAt = new Date(clock.now()).toISOString();
  const replicator = new Replicator({
    repo,
    clock,
    logger: log,
    onPit: (server, pit) => {
      const serverId = [...assigned].find(([, name]) => name === server)?.[0];
      if (serverId === undefined || plain) return;
      if (pendingPits.size >= MAX_PENDING_PITS) {
        const oldest = pendingPits.keys().next().value!;
        pendingPits.delete(oldest);
        log.warn(
          { pit: oldest },
          "the control plane has not taken this PIT: `lifeboat store reindex` catalogs it",
        );
      }
      pendingPits.set(pit.id, serverId);
      newPit = true;
      wake?.();
    },
    serverName: async (peer, hello) => {
      const [role, serverId] = peer.id.split(":", 2);
      if (role !== "agent" || !serverId || hello.agent.serverId !== serverId)
        throw new LifeboatError(
          "AUTH_FORBIDDEN",
          `${peer.id} may not replicate server ${hello.agent.serverId}`,
          {
            hint: "an agent replicates only the server its certificate names",
            retryable: false,
          },
        );
      if (!assigned.has(serverId)) await refresh();
      const name = assigned.get(serverId);
      if (!name)
        throw new LifeboatError(
          "REPLICATOR_NOT_ASSIGNED",
          `server ${serverId} is not assigned to this replicator`,
          {
            hint: "assign it (lifeboat settings set --server SERVER replicatorId=ID) or let it send to the control plane",
            retryable: true,
          },
        );
      return name;
    },
    // Fencing (store/head.ts): the control plane raises the epoch when another replicator held the stream.
    takeEpoch: async (_server, peer, headEpoch) => {
      const serverId = peer.id.split(":", 2)[1]!;
      const r = await call<{ epoch: number }>("/api/v1/replicator/epoch", {
        method: "POST",
        body: { serverId, headEpoch },
      });
      return r.epoch;
    },
  });
  const revocations = createRevocationList({ dispatcher, endpoint, clock });
  const onSocket = wireConnectionHandler(replicator.wire, async (socket) => {
    const id = await verifyClientCertificate(socket, {
      caPem: opts.caPem,
      isRevoked: (serial) => revocations.isRevoked(serial),
      clock,
    });
    return { id: `${id.role}:${id.subjectId}` };
  });
  attachWire(server, onSocket);

  // Heartbeats keep it online and the assignments fresh.
  let stopped = false;
  let every = 15;
  const beat = async (): Promise<void> => {
    while (!stopped) {
      newPit = false;
      let progressed = false;
      try {
        const pits = [...pendingPits]
          .slice(0, PITS_PER_HEARTBEAT)
          .map(([pitId, serverId]) => ({ pitId, serverId }));
        const r = await call<{ heartbeatSeconds: number; servers: string[]; pitsRecorded?: string[] }>(
          "/api/v1/replicator/heartbeat",
          {
            method: "POST",
            body: {
              state: "ACTIVE",
              address,
              ...(plain ? {} : { ingest: { startedAt, ...replicator.ingestCounters() } }),
              ...(pits.length > 0 && !plain ? { pits } : {}),
            },
          },
        );
        every = r.heartbeatSeconds;
        for (const id of r.pitsRecorded ?? []) progressed = pendingPits.delete(id) || progressed;
        if (r.servers.some((id) => !assigned.has(id)) || r.servers.length !== assigned.size) {
          await refresh();
          // Streams of servers assigned elsewhere (a drain, the pool's rebalance) end here.
          const names = new Set(assigned.values());
          for (const server of replicator.servers()) if (!names.has(server)) await replicator.release(server);
        }
      } catch (err) {
        if (!plain && isLifeboatError(err) && err.code === "REQUEST_INVALID") {
          plain = true;
          pendingPits.clear();
          log.warn(
            { err: String(err) },
            "the control plane takes no ingest or PIT reports (older version): its catalog learns this replicator's PITs at `lifeboat store reindex`",
          );
          continue;
        }
        if (!stopped) log.warn({ err: String(err) }, "replicator heartbeat failed");
      }
      // A PIT made meanwhile, or more than one heartbeat carries: the next one goes at once.
      if (!stopped && (newPit || (progressed && pendingPits.size > 0))) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, every * 1000);
        t.unref();
        wake = () => {
          clearTimeout(t);
          resolve();
        };
        stopping.then(() => {
          clearTimeout(t);
          resolve();
        }, resolve);
      });
      wake = undefined;
    }
  };
  let stop!: () => void;
  const stopping = new Promise<void>((r) => (stop = r));
  const beating = beat();
  log.info({ replicatorId: identity.replicatorId, address, servers: assigned.size }, "replicator started");
  return {
    replicatorId: identity.replicatorId,
    address,
    port,
    async close() {
      stopped = true;
      stop();
      server.close();
      await replicator.close();
      await beating;
      await repo.close();
      await dispatcher.close();
    },
  };
}

/** The identity in D, registering first with the install token when there is none. */
async function registered(
  opts: StandaloneOptions,
  endpoint: string,
  files: { key: string; cert: string; identity: string },
  address: string,
): Promise<{ identity: Identity; keyPem: string; certPem: string }> {
  try {
    const identity = JSON.parse(await fs.readFile(files.identity, "utf8")) as Identity;
    return {
      identity,
      keyPem: await fs.readFile(files.key, "utf8"),
      certPem: await fs.readFile(files.cert, "utf8"),
    };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (!opts.token)
    throw new LifeboatError("REPLICATOR_NOT_REGISTERED", `no replicator identity in ${opts.dataDir}`, {
      hint: "give an install token the first time: lifeboat token create --role replicator, then --token-file",
      exitCode: 2,
    });
  const name = opts.name ?? (await import("node:os")).hostname().replace(/[^A-Za-z0-9._-]/g, "-");
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: name });
  const d = createApiDispatcher({ caPem: opts.caPem });
  try {
    const r = await fetchJson<{ replicatorId: string; replicatorName: string; certificatePem: string }>(
      d,
      `${endpoint}/api/v1/replicator/register`,
      { body: { token: opts.token, csr: csrPem, name, address } },
    );
    const identity = { replicatorId: r.replicatorId, name: r.replicatorName, address };
    await writeFileAtomic(files.key, keyPem, { mode: 0o600 });
    await writeFileAtomic(files.cert, r.certificatePem, { mode: 0o600 });
    await writeFileAtomic(path.join(opts.dataDir, "ca.pem"), opts.caPem, { mode: 0o600 });
    await writeFileAtomic(files.identity, `${JSON.stringify(identity, null, 2)}\n`, { mode: 0o600 });
    return { identity, keyPem, certPem: r.certificatePem };
  } finally {
    await d.close();
  }
}
