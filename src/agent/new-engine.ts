/**
 * The agent's replication engine (replication.ts), wired to this agent: its
 * configured disks that are present, the wire to the replicator at the
 * current data address (through the environment's HTTPS proxy when one
 * applies), the client certificate as it is at each connection, and the
 * wire session of the last run to resume. Each HELLO names LIFEBOAT_VERSION.
 */
import { type Clock, LIFEBOAT_VERSION, type Logger } from "../base/index.js";
import { proxyFromEnvironment } from "../net/index.js";
import { connectWire } from "../wire/index.js";
import type { AgentConfig } from "./config.js";
import type { AgentCredentials } from "./credentials.js";
import type { DiskMonitor } from "./disk-changes.js";
import { Replication, type ReplicationOptions } from "./replication.js";
import { type DiskGeneration, readSessionToken } from "./state-files.js";

export interface NewEngineOptions {
  config: AgentConfig;
  disks: DiskMonitor;
  /** Where the wire connects, read at each connection (the settings may change it). */
  data: { host: string; port: number };
  /** Read at each connection: a renewed certificate is presented from the next one. */
  creds: AgentCredentials;
  /** D/state/session.json: the resume token of the last wire session. */
  sessionFile: string;
  /** The disks' generation ids for each HELLO. */
  generations: () => DiskGeneration[] | undefined;
  /** A connection to the replicator ended. */
  onDisconnect: () => void;
  whileFrozen?: ReplicationOptions["whileFrozen"] | undefined;
  clock: Clock;
  log: Logger;
}

/**
 * A replication engine for the configured disks, resuming the last wire
 * session. Made at start and again after receive mode or a fence. The
 * certificate is read from `creds` at each connection (renew replaces it).
 */
export async function newEngine(o: NewEngineOptions): Promise<Replication> {
  const { config, disks, data, creds, clock } = o;
  const resumeToken = await readSessionToken(o.sessionFile);
  return new Replication({
    ...(resumeToken ? { resumeToken } : {}),
    generations: o.generations,
    onDisconnect: o.onDisconnect,
    serverId: config.serverId,
    hostname: config.hostname,
    version: LIFEBOAT_VERSION,
    disks: disks.wanted(),
    blockSize: config.blockSize,
    settings: config.settings,
    // Sizes and the disk set are checked at the same cadence.
    sizeCheckMs: disks.intervalMs,
    onStepFailed: () => disks.soon(),
    // Through the HTTPS proxy of the environment (HTTPS_PROXY, NO_PROXY) when one applies, like the API.
    connect: () => {
      const proxy = proxyFromEnvironment(data.host, data.port);
      return connectWire({
        host: data.host,
        port: data.port,
        caPem: creds.caPem,
        certPem: creds.certPem,
        keyPem: creds.keyPem,
        clock,
        ...(proxy ? { proxy } : {}),
      });
    },
    ...(o.whileFrozen ? { whileFrozen: o.whileFrozen } : {}),
    clock,
    logger: o.log,
  });
}
