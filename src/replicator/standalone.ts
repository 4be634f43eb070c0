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
import { type Server, createServer } from "node:tls";
import type { Agent } from "undici";
import {
  type Clock,
  LifeboatError,
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
import { type ControlCall, ControlLink } from "./control-link.js";
import { Replicator } from "./service.js";

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
  // Listen first: the address registered must carry the port actually bound. Handshakes
  // fail until the server certificate is set below.
  const { server, host, port } = await listenTls(opts.listen, opts.caPem);
  const address = opts.address ?? `${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;

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
  const call: ControlCall = (p, o = {}) => fetchJson(dispatcher, `${endpoint}${p}`, o);
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

  const link = new ControlLink(call, address, clock, log);
  await link.refresh();
  const replicator = new Replicator({
    repo,
    clock,
    logger: log,
    onPit: (serverName, pit) => link.pitMade(serverName, pit),
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
      if (!link.assigned.has(serverId)) await link.refresh();
      const name = link.assigned.get(serverId);
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
  link.start(replicator);
  log.info(
    { replicatorId: identity.replicatorId, address, servers: link.assigned.size },
    "replicator started",
  );
  return {
    replicatorId: identity.replicatorId,
    address,
    port,
    async close() {
      const ending = link.close();
      server.close();
      await replicator.close();
      await ending;
      await repo.close();
      await dispatcher.close();
    },
  };
}

/** A TLS server listening on `listen` (host:port) for agents' mutual TLS; its own certificate comes later. */
async function listenTls(
  listen: string,
  caPem: string,
): Promise<{ server: Server; host: string; port: number }> {
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(listen);
  if (!m)
    throw new LifeboatError("USAGE", `--listen ${listen} is not host:port`, {
      hint: "e.g. 0.0.0.0:8443",
      exitCode: 2,
    });
  const server = createServer({
    minVersion: "TLSv1.3",
    requestCert: true,
    rejectUnauthorized: false,
    ca: caPem,
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(m[2]), m[1], () => resolve());
  });
  return { server, host: m[1]!, port: (server.address() as AddressInfo).port };
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
