/**
 * The agent's lifecycle on a source server, below the command line:
 * installing (register with an install token, write the configuration
 * directory), telling whether an agent runs, asking it to rescan, stopping
 * it, deregistering and removing the installation.
 *
 * Install writes nothing until registration succeeded, then the key and
 * certificates, and config.json last: config.json existing means a complete
 * installation. A failure after registration removes what was written.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import {
  type Clock,
  LifeboatError,
  type Logger,
  silentLogger,
  systemClock,
  writeFileAtomic,
} from "../base/index.js";
import {
  certFingerprint,
  createApiDispatcher,
  fetchJson,
  formatFingerprint,
  generateKeyAndCsr,
  parseFingerprint,
  proxyFromEnvironment,
  sameFingerprint,
} from "../net/index.js";
import { blockDeviceSizeBytes, deviceNumbers } from "../store/block-device.js";
import {
  type AgentConfig,
  type AgentDisk,
  agentConfigSchema,
  agentPaths,
  saveAgentConfig,
} from "./config.js";
import { type AgentStatus, readAgentStatus } from "./status.js";

/** A status older than this is not a running agent's (it rewrites it about once a second). */
export const STATUS_STALE_MS = 30_000;

/** D/state/rescan-request.json: `{"disks": [indexes] | null (all), "requestedAt": ms}`. */
export function rescanRequestPath(configDir: string): string {
  return path.join(agentPaths(configDir).state, "rescan-request.json");
}

export interface ChosenDisk {
  path: string;
  kind: AgentDisk["kind"];
  id: string;
  sizeBytes: number;
}

/**
 * Checks that `p` is a block device (kind "device") or a regular file (kind
 * "image") and returns it with its size and stable id: AGENT_DISK_INVALID
 * otherwise. An image's path and id are its absolute path; a device's id is
 * its /dev/disk/by-id name when it has one.
 */
export async function checkDisk(p: string, kind: AgentDisk["kind"]): Promise<ChosenDisk> {
  const abs = path.resolve(p);
  let st;
  try {
    st = await fs.stat(abs);
  } catch (err) {
    throw new LifeboatError(
      "AGENT_DISK_INVALID",
      `disk ${abs}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { hint: "give an existing path; list block devices with `lsblk`", cause: err, exitCode: 2 },
    );
  }
  if (kind === "image") {
    if (!st.isFile())
      throw new LifeboatError("AGENT_DISK_INVALID", `disk image ${abs} is not a regular file`, {
        hint: "--disk-image takes image files; give block devices with --devices",
        exitCode: 2,
      });
    return { path: abs, kind, id: abs, sizeBytes: st.size };
  }
  if (!st.isBlockDevice())
    throw new LifeboatError("AGENT_DISK_INVALID", `disk ${abs} is not a block device`, {
      hint: "--devices takes block devices such as /dev/sdb; give image files with --disk-image",
      exitCode: 2,
    });
  const { major, minor } = deviceNumbers(st.rdev);
  return {
    path: abs,
    kind,
    id: await stableDeviceId(abs),
    sizeBytes: await blockDeviceSizeBytes(major, minor),
  };
}

/** The first /dev/disk/by-id name (sorted) that leads to `device`, else the path itself. */
async function stableDeviceId(device: string, byId = "/dev/disk/by-id"): Promise<string> {
  try {
    const target = await fs.realpath(device);
    for (const name of (await fs.readdir(byId)).sort()) {
      if ((await fs.realpath(path.join(byId, name)).catch(() => "")) === target) return name.slice(0, 256);
    }
  } catch {
    // no by-id directory (containers, some VMs)
  }
  return device;
}

export interface InstallOptions {
  configDir: string;
  /** https://host:port, stored as given. */
  endpoint: string;
  /** The install token; never written anywhere. */
  token: string;
  /** Trust this CA (PEM) ... */
  caPem?: string;
  /** ... or the CA with this SHA-256 fingerprint (both: they must agree). */
  caFingerprint?: string;
  hostname: string;
  blockSize: number;
  disks: ChosenDisk[];
  /**
   * "all" when the disks are every non-removable disk found (no list given):
   * the running agent then adds disks that appear later. Default "listed".
   */
  diskSelection?: AgentConfig["diskSelection"];
  /** Sent with the registration (host facts, disks). */
  inventory: Record<string, unknown>;
  logger?: Logger;
}

export interface InstallResult {
  serverId: string;
  serverName: string;
  configDir: string;
  /** Paths written, in the order written. */
  written: string[];
  disks: Array<AgentDisk & { sizeBytes: number }>;
}

interface Registered {
  serverId: string;
  serverName: string;
  certificatePem: string;
  caPem: string;
}

/**
 * Registers this host and writes its configuration directory. Refuses an
 * existing installation (AGENT_ALREADY_INSTALLED); the server's refusals
 * (TOKEN_INVALID, TOKEN_EXPIRED, ...) and network errors propagate with
 * nothing written.
 */
export async function installAgent(opts: InstallOptions): Promise<InstallResult> {
  const logger = opts.logger ?? silentLogger;
  const p = agentPaths(opts.configDir);
  await assertNotInstalled(p.config);
  if (opts.disks.length === 0)
    throw new LifeboatError("AGENT_NO_DISKS", "no disk to replicate was chosen", {
      hint: "give --devices or --disk-image, or choose at least one disk when asked",
      exitCode: 2,
    });
  const pin = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);
  if (opts.caPem === undefined && pin === undefined)
    throw new LifeboatError("USAGE", "the agent needs to know the server's CA", {
      hint: "give --ca-file (the server's D/ca.pem) or --ca-fingerprint",
      exitCode: 2,
    });
  const disks = opts.disks.map((d, index) => ({
    index,
    path: d.path,
    kind: d.kind,
    id: d.id,
    sizeBytes: d.sizeBytes,
  }));
  // Checked before anything goes to the server, so a bad value costs no token use.
  const config: AgentConfig = agentConfigSchema.parse({
    version: 1,
    endpoint: opts.endpoint,
    serverId: "pending",
    serverName: "pending",
    hostname: opts.hostname,
    blockSize: opts.blockSize,
    disks: disks.map(({ sizeBytes: _size, ...d }) => d),
    diskSelection: opts.diskSelection ?? "listed",
    settings: {},
  });

  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: opts.hostname });
  const dispatcher = createApiDispatcher({
    ...(opts.caPem !== undefined ? { caPem: opts.caPem } : {}),
    ...(pin !== undefined ? { caFingerprint: pin } : {}),
    ...endpointProxy(opts.endpoint),
  });
  let r: Registered;
  try {
    r = checkRegistered(
      await fetchJson<unknown>(dispatcher, `${opts.endpoint.replace(/\/+$/, "")}/api/v1/register`, {
        method: "POST",
        body: { token: opts.token, csr: csrPem, hostname: opts.hostname, inventory: opts.inventory },
      }),
    );
  } finally {
    await dispatcher.close();
  }
  if (pin !== undefined && !sameFingerprint(certFingerprint(r.caPem), pin))
    throw new LifeboatError(
      "NET_CA_MISMATCH",
      `the server sent a CA with fingerprint ${certFingerprint(r.caPem)}, not the pinned ${formatFingerprint(pin)}`,
      { hint: "check --ca-fingerprint against the server's ca.pem; nothing was installed" },
    );
  const caPem = opts.caPem ?? r.caPem;
  const final = { ...config, serverId: r.serverId, serverName: r.serverName };

  const written: string[] = [];
  const createdDir = await fs.mkdir(opts.configDir, { recursive: true, mode: 0o700 });
  try {
    await fs.chmod(opts.configDir, 0o700);
    for (const [file, data] of [
      [p.key, keyPem],
      [p.cert, r.certificatePem],
      [p.ca, caPem],
    ] as const) {
      await writeFileAtomic(file, data, { mode: 0o600 });
      written.push(file);
    }
    await saveAgentConfig(opts.configDir, final);
    written.push(p.config);
  } catch (err) {
    await removeWritten(createdDir, written, p.state).catch((e: unknown) =>
      logger.warn({ err: e }, "could not remove a partly written agent installation"),
    );
    await deregister(final, { caPem, clientCertPem: r.certificatePem, clientKeyPem: keyPem }).catch(
      (e: unknown) =>
        logger.warn(
          { err: e, serverId: r.serverId },
          "install failed after registering; decommission the server it registered",
        ),
    );
    throw err;
  }
  return { serverId: r.serverId, serverName: r.serverName, configDir: opts.configDir, written, disks };
}

async function assertNotInstalled(configFile: string): Promise<void> {
  try {
    await fs.access(configFile);
  } catch {
    return;
  }
  throw new LifeboatError("AGENT_ALREADY_INSTALLED", `an agent is already installed: ${configFile} exists`, {
    hint: "run `lifeboat agent uninstall` first (or give another --config-dir)",
  });
}

function checkRegistered(body: unknown): Registered {
  const b = (body ?? {}) as Record<string, unknown>;
  for (const k of ["serverId", "serverName", "certificatePem", "caPem"])
    if (typeof b[k] !== "string" || b[k] === "")
      throw new LifeboatError("NET_BAD_RESPONSE", `the registration answer has no ${k}`, {
        hint: "check that the endpoint is a Lifeboat server of this version",
      });
  return b as unknown as Registered;
}

async function removeWritten(
  createdDir: string | undefined,
  written: string[],
  stateDir: string,
): Promise<void> {
  // mkdir -p returns the first directory it made: remove from there when it made D.
  if (createdDir !== undefined) {
    await fs.rm(createdDir, { recursive: true, force: true });
    return;
  }
  for (const f of written) await fs.rm(f, { force: true });
  await fs.rmdir(stateDir).catch(() => undefined);
}

/** True when a process with this pid exists (one of another user counts). */
export function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * The pid of the agent that wrote `status`, when it still runs: its process
 * exists and the status is fresh. A stale status with a live pid is not
 * trusted (the pid may belong to another process by now).
 */
export function runningAgentPid(status: AgentStatus | null, now: number): number | undefined {
  if (status === null || now - status.updatedAt > STATUS_STALE_MS || !pidAlive(status.pid)) return undefined;
  return status.pid;
}

/** The last status with `state` STOPPED unless a live agent wrote it; null when there is none. */
export async function currentStatus(
  configDir: string,
  clock: Clock = systemClock,
): Promise<AgentStatus | null> {
  const status = await readAgentStatus(agentPaths(configDir).status);
  if (status === null) return null;
  return runningAgentPid(status, clock.now()) === undefined ? { ...status, state: "STOPPED" } : status;
}

/**
 * Writes the rescan request (atomically) and signals a running agent with
 * SIGUSR2. `delivered` is false when no agent runs: the request waits for
 * its next start.
 */
export async function requestRescan(
  configDir: string,
  disks: number[] | null,
  clock: Clock = systemClock,
): Promise<{ file: string; delivered: boolean }> {
  const file = rescanRequestPath(configDir);
  await writeFileAtomic(file, `${JSON.stringify({ disks, requestedAt: clock.now() })}\n`, { mode: 0o600 });
  const pid = runningAgentPid(await readAgentStatus(agentPaths(configDir).status), clock.now());
  if (pid === undefined) return { file, delivered: false };
  try {
    process.kill(pid, "SIGUSR2");
    return { file, delivered: true };
  } catch {
    return { file, delivered: false };
  }
}

/**
 * Tells a running agent (SIGUSR2) to look at its configuration and state
 * now rather than at its next check; false when none runs.
 */
export async function notifyAgent(configDir: string, clock: Clock = systemClock): Promise<boolean> {
  const pid = runningAgentPid(await readAgentStatus(agentPaths(configDir).status), clock.now());
  if (pid === undefined) return false;
  try {
    process.kill(pid, "SIGUSR2");
    return true;
  } catch {
    return false;
  }
}

/**
 * Stops a running agent: SIGTERM, then waits up to `timeoutMs` for it to
 * exit. Returns the pid it stopped, or undefined when none ran;
 * AGENT_STOP_TIMEOUT when it is still running at the end.
 */
export async function stopAgent(
  configDir: string,
  opts: { timeoutMs?: number; pollMs?: number; clock?: Clock } = {},
): Promise<number | undefined> {
  const clock = opts.clock ?? systemClock;
  const pid = runningAgentPid(await readAgentStatus(agentPaths(configDir).status), clock.now());
  if (pid === undefined) return undefined;
  try {
    process.kill(pid, "SIGTERM");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return undefined;
    throw new LifeboatError(
      "AGENT_STOP_FAILED",
      `cannot signal the agent (pid ${pid}): ${(err as Error).message}`,
      {
        hint: "run as root, or stop the service (systemctl stop lifeboat-agent)",
        cause: err,
      },
    );
  }
  const deadline = clock.now() + (opts.timeoutMs ?? 30_000);
  while (pidAlive(pid)) {
    if (clock.now() >= deadline)
      throw new LifeboatError("AGENT_STOP_FAILED", `the agent (pid ${pid}) is still running after SIGTERM`, {
        hint: "it may be finishing a consistency point; try again, or stop its service and kill it",
      });
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 100));
  }
  return pid;
}

/** POST /api/v1/agent/deregister with the agent's own certificate: the server is decommissioned. */
export async function deregister(
  config: Pick<AgentConfig, "endpoint">,
  tls: { caPem: string; clientCertPem: string; clientKeyPem: string },
): Promise<{ serverId: string; state: string }> {
  const dispatcher = createApiDispatcher({
    ...tls,
    connectTimeoutMs: 10_000,
    ...endpointProxy(config.endpoint),
  });
  try {
    return await fetchJson<{ serverId: string; state: string }>(
      dispatcher,
      `${config.endpoint.replace(/\/+$/, "")}/api/v1/agent/deregister`,
      { method: "POST", body: {}, timeoutMs: 30_000 },
    );
  } finally {
    await dispatcher.close();
  }
}

/** Deregisters with the credentials in the configuration directory. */
export async function deregisterInstalled(
  configDir: string,
  config: AgentConfig,
): Promise<{ serverId: string; state: string }> {
  const p = agentPaths(configDir);
  const [caPem, clientCertPem, clientKeyPem] = await Promise.all(
    [p.ca, p.cert, p.key].map((f) => fs.readFile(f, "utf8")),
  );
  return deregister(config, { caPem: caPem!, clientCertPem: clientCertPem!, clientKeyPem: clientKeyPem! });
}

/** Removes the installation: all of D, or with keepConfig only the private key. Returns what it removed. */
export async function removeInstallation(configDir: string, keepConfig: boolean): Promise<string> {
  const p = agentPaths(configDir);
  if (keepConfig) {
    await fs.rm(p.key, { force: true });
    return p.key;
  }
  await fs.rm(configDir, { recursive: true, force: true });
  return configDir;
}

/** `{ proxy }` when the environment's HTTPS proxy applies to `endpoint`, else nothing. */
function endpointProxy(endpoint: string): { proxy?: URL } {
  const url = new URL(endpoint);
  const proxy = proxyFromEnvironment(url.hostname.replace(/^\[|\]$/g, ""), Number(url.port || 443));
  return proxy ? { proxy } : {};
}
