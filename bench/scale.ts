/**
 * The replicator pool at fleet size: C control-plane instances on one
 * PostgreSQL (more than one behind an HAProxy TCP pass-through balancer,
 * test/support/tcp-balancer.ts), R replicator processes (`lifeboat
 * replicator start`) writing one repository (a directory, or any location
 * such as an S3 URL), N agents (in this process) replicating image files of
 * random bytes, the first ones optionally block devices in trace mode. It
 * measures the aggregate ingest of the initial syncs (every agent started
 * at once until all are CONTINUOUS), the time to a PIT of every server, and
 * the control plane's API latency (GET /api/v1/servers through the balancer,
 * polled while the syncs run); optionally it reads one PIT per replicator
 * back and launches one drill per replicator. test/e2e/pool-fleet.slow.test.ts
 * runs it small and checks it.
 *
 *   node dist/bench/scale.js [--agents 30] [--replicators 3] [--disk-mib 16]
 *     [--control-planes 2] [--repo LOCATION] [--pg URL]
 *
 * --pg (default: LIFEBOAT_TEST_PG_URL) is a superuser URL; a database is
 * created for the run and dropped after it. Nothing needs root; two control
 * planes need haproxy.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { AgentService } from "../src/agent/service.js";
import { installAgent } from "../src/agent/install.js";
import { loadAgentConfig, saveAgentConfig } from "../src/agent/config.js";
import { openDatabase, rebuildPitCatalog } from "../src/control/index.js";
import { initServer } from "../src/control/init.js";
import { createApiDispatcher, fetchJson } from "../src/net/index.js";
import { type Pit, exportDisk, listPits, openRepository, verifyRepository } from "../src/store/index.js";
import { type TcpBalancer, startTcpBalancer } from "../test/support/tcp-balancer.js";
import { ROOT } from "./sys.js";

const BIN = path.join(ROOT, "bin", "lifeboat.js");

export interface FleetOptions {
  /** A working directory (removed by the caller). */
  dir: string;
  /** postgres://... of an empty or freshly migrated database. */
  databaseUrl: string;
  agents: number;
  replicators: number;
  diskBytes: number;
  /** Compare one PIT of each replicator's servers with its image (reads it all back). */
  readBack?: boolean;
  /** Control-plane instances (default 1); several share the data directory behind an HAProxy TCP balancer. */
  controlPlanes?: number;
  /** The repository location given to `server init` (default: a directory in the data directory). */
  repository?: string;
  /**
   * Block devices whose contents are the first agents' disks (one each, at
   * least diskBytes; their first diskBytes are overwritten with random
   * bytes), replicated in trace mode instead of image files.
   */
  devices?: { path: string; sizeBytes: number }[];
  /**
   * After the PITs: the catalog rebuilt from the repository (a separate
   * replicator's PITs reach it that way), then one drill per replicator
   * (image target, through the control plane) of one of its servers (a
   * device's first), its launched image compared with the source disk.
   */
  drills?: boolean;
  progress?: (line: string) => void;
}

export interface FleetResult {
  agents: number;
  replicators: number;
  diskBytes: number;
  /** Servers per replicator once the pool spread them. */
  spread: Record<string, number>;
  initialSyncSeconds: number;
  /** Disk bytes of all agents over the initial sync time. */
  ingestMBps: number;
  pitAllSeconds: number;
  pits: number;
  api: { requests: number; p50Ms: number; p99Ms: number; maxMs: number };
  verifyOk: boolean;
  readBack: { server: string; replicator: string; equal: boolean }[];
  controlPlanes: number;
  /** "directory" or the location's scheme ("s3"). */
  repository: string;
  /** The device agents' trackers ("trace" when every disk has one). */
  devices: { server: string; device: string; tracker: string }[];
  drills: {
    server: string;
    replicator: string;
    jobId: string;
    state: string;
    seconds: number;
    equal: boolean;
  }[];
  /** Connections the balancer gave each instance (several instances only). */
  balancer?: Record<string, { total: number; current: number; up: boolean }>;
  cpus: number;
  loadAverage: number[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, ms: number, f: () => Promise<T | undefined | false>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * Passes on what a child prints to stderr except its pino lines below
 * "error" (the pool's routine moves and request logs would drown the output).
 */
function forwardErrors(child: ChildProcess, name: string): void {
  let partial = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop()!;
    for (const line of lines) {
      const level = /^\{"level":(\d+)/.exec(line)?.[1];
      if (line && (level === undefined || Number(level) >= 50)) process.stderr.write(`${name}: ${line}\n`);
    }
  });
}

/** SHA-256 of a file's or a device's first `bytes` bytes (all of a file when not given). */
async function sha256Of(file: string, bytes?: number): Promise<string> {
  const h = createHash("sha256");
  const stream = createReadStream(file, bytes !== undefined ? { start: 0, end: bytes - 1 } : {});
  for await (const chunk of stream) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Writes `bytes` at the start of a block device and flushes them to it. */
async function fillDevice(device: string, bytes: Buffer): Promise<void> {
  const fh = await open(device, "r+");
  try {
    await fh.write(bytes, 0, bytes.length, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const quantile = (sorted: number[], q: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : 0;

export async function runPoolFleet(o: FleetOptions): Promise<FleetResult> {
  const say = o.progress ?? (() => undefined);
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    const dataDir = path.join(o.dir, "server");
    const init = await initServer({
      dataDir,
      databaseUrl: o.databaseUrl,
      ...(o.repository !== undefined ? { repository: o.repository } : {}),
    });
    const configFile = path.join(dataDir, "config.json");
    const config = JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>;
    // Long enough that a replicator on a loaded machine is not taken for dead in the middle of the run.
    config.heartbeatTimeoutSeconds = 60;
    await writeFile(configFile, JSON.stringify(config));
    // The control planes in processes of their own, so that their latency is their own, not the
    // agents'. Several share the data directory and the database, behind a TCP balancer.
    const controlPlanes = o.controlPlanes ?? 1;
    const cpPorts: number[] = [];
    for (let i = 1; i <= controlPlanes; i++) {
      const port = await freePort();
      cpPorts.push(port);
      const cp = spawn(
        process.execPath,
        [BIN, "server", "start", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      forwardErrors(cp, `cp${i}`);
      const cpExited = new Promise((r) => cp.once("close", r));
      cleanups.push(async () => {
        cp.kill("SIGTERM");
        await Promise.race([cpExited, sleep(15_000)]);
        cp.kill("SIGKILL");
      });
    }
    const caFile = path.join(dataDir, "ca.pem");
    const caPem = await readFile(caFile, "utf8");
    const operator = createApiDispatcher({ caPem });
    cleanups.push(() => operator.close());
    const call = <T>(base: string, p: string, b?: unknown) =>
      fetchJson<T>(operator, `${base}${p}`, {
        ...(b !== undefined ? { method: "POST", body: b } : {}),
        headers: { authorization: `Bearer ${init.adminApiKey}` },
      });
    for (const port of cpPorts)
      await until(`the control plane on port ${port}`, 60_000, () =>
        call(`https://127.0.0.1:${port}`, "/api/v1/replicators").then(
          () => true,
          () => false,
        ),
      );
    let balancer: TcpBalancer | undefined;
    if (controlPlanes > 1) {
      balancer = await startTcpBalancer(
        cpPorts.map((port, i) => ({ name: `cp${i + 1}`, host: "127.0.0.1", port })),
      );
      cleanups.push(() => balancer!.stop());
    }
    // Everything (replicators, agents, the operator, the latency poller) goes through the balancer.
    const server = { url: balancer?.url ?? `https://127.0.0.1:${cpPorts[0]}` };
    const api = <T>(p: string, b?: unknown) => call<T>(server.url, p, b);
    type Rep = { id: string; name: string; online: boolean; assignedServers: string[] };
    const replicators = () => api<{ replicators: Rep[] }>("/api/v1/replicators").then((r) => r.replicators);

    say(`starting ${o.replicators} replicators`);
    for (let i = 1; i <= o.replicators; i++) {
      const { token } = await api<{ token: string }>("/api/v1/tokens", { role: "replicator", uses: 1 });
      const tokenFile = path.join(o.dir, `rep${i}.token`);
      await writeFile(tokenFile, token, { mode: 0o600 });
      const child: ChildProcess = spawn(
        process.execPath,
        [
          BIN,
          "replicator",
          "start",
          ...["--endpoint", server.url, "--token-file", tokenFile, "--ca-file", caFile],
          ...["--data-dir", path.join(o.dir, `rep${i}`), "--listen", "127.0.0.1:0", "--name", `rep${i}`],
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      forwardErrors(child, `rep${i}`);
      const exited = new Promise((r) => child.once("close", r));
      cleanups.push(async () => {
        child.kill("SIGTERM");
        await Promise.race([exited, sleep(15_000)]);
        child.kill("SIGKILL");
      });
    }
    await until("the replicators online", 60_000, async () => {
      const rs = await replicators();
      return rs.length === o.replicators && rs.every((r) => r.online);
    });

    const devices = o.devices ?? [];
    say(
      `installing ${o.agents} agents (${o.diskBytes} bytes each${devices.length ? `, ${devices.length} on devices in trace mode` : ""})`,
    );
    const installed: {
      name: string;
      serverId: string;
      image: string;
      device: boolean;
      configDir: string;
    }[] = [];
    for (let i = 0; i < o.agents; i++) {
      const device = devices[i]?.path;
      const image = device ?? path.join(o.dir, `disk${i}.img`);
      // A device's contents: random bytes written to it (the agent reads the device, not a file).
      if (device) await fillDevice(device, randomBytes(o.diskBytes));
      else await writeFile(image, randomBytes(o.diskBytes));
      const { token } = await api<{ token: string }>("/api/v1/tokens", { role: "agent", uses: 1 });
      const configDir = path.join(o.dir, `agent${i}`);
      const r = await installAgent({
        configDir,
        endpoint: server.url,
        token,
        caPem,
        hostname: `host${String(i).padStart(3, "0")}`,
        blockSize: 65536,
        disks: [
          device
            ? { path: device, kind: "device", id: device, sizeBytes: devices[i]!.sizeBytes }
            : { path: image, kind: "image", id: image, sizeBytes: o.diskBytes },
        ],
        inventory: {},
      });
      if (device) {
        // Trace mode or nothing: an agent that cannot trace fails to start rather than scan.
        const c = await loadAgentConfig(configDir);
        await saveAgentConfig(configDir, { ...c, settings: { ...c.settings, tracker: "trace" } });
      }
      installed.push({ name: r.serverName, serverId: r.serverId, image, device: !!device, configDir });
    }
    // Agents start once the pool placed their servers (an agent reads its replicator's address at start).
    const placed = await until("the pool to place every server", 60_000, async () => {
      const rs = await replicators();
      return rs.reduce((n, r) => n + r.assignedServers.length, 0) === o.agents ? rs : undefined;
    });
    const spread = Object.fromEntries(placed.map((r) => [r.name, r.assignedServers.length]));
    say(`spread: ${JSON.stringify(spread)}`);

    // The API's latency while the fleet syncs, measured from a process of its own (the agents keep
    // this one's event loop busy): one GET /api/v1/servers every 100 ms, one line per answer.
    const latencies: number[] = [];
    const pollerFile = path.join(o.dir, "poller.mjs");
    await writeFile(
      pollerFile,
      [
        `import { readFileSync } from "node:fs";`,
        `import { createApiDispatcher, fetchJson } from ${JSON.stringify(path.join(ROOT, "dist", "src", "net", "index.js"))};`,
        `const [url, ca, key] = process.argv.slice(2);`,
        `const d = createApiDispatcher({ caPem: readFileSync(ca, "utf8") });`,
        `for (;;) {`,
        `  const t = performance.now();`,
        `  await fetchJson(d, url + "/api/v1/servers", { headers: { authorization: "Bearer " + key } });`,
        `  process.stdout.write((performance.now() - t) + "\\n");`,
        `  await new Promise((r) => setTimeout(r, 100));`,
        `}`,
      ].join("\n"),
    );
    const poller = spawn(process.execPath, [pollerFile, server.url, caFile, init.adminApiKey], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    poller.stdout.setEncoding("utf8");
    let partial = "";
    poller.stdout.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop()!;
      for (const l of lines) if (l) latencies.push(Number(l));
    });
    const pollerExited = new Promise((r) => poller.once("close", r));
    const stopPoller = async () => {
      poller.kill("SIGTERM");
      await pollerExited;
    };
    cleanups.push(stopPoller);
    await until("the latency poller's first answer", 60_000, () => Promise.resolve(latencies.length > 0));
    latencies.length = 0;

    say("initial sync of every agent");
    const t0 = performance.now();
    const agents = await Promise.all(
      installed.map(async (a) => {
        const svc = await AgentService.start({ configDir: a.configDir, settingsIntervalMs: 5000 });
        cleanups.push(() => svc.stop());
        return { ...a, svc };
      }),
    );
    await until("every agent CONTINUOUS", 1_800_000, () => {
      const all = agents.every((a) => {
        const s = a.svc.replication.status();
        return s?.connected && s.disks.every((d) => d.state === "CONTINUOUS");
      });
      return Promise.resolve(all);
    });
    const initialSyncSeconds = (performance.now() - t0) / 1000;
    await stopPoller();
    say(`initial sync: ${initialSyncSeconds.toFixed(1)} s`);
    const deviceAgents = agents
      .filter((a) => a.device)
      .map((a) => ({ server: a.name, device: a.image, tracker: a.svc.replication.tracker }));

    const t1 = performance.now();
    // A point is asked again once if the first one failed (a reconnect in the middle of it).
    const points = await Promise.all(
      agents.map((a) => a.svc.replication.requestPoint().catch(() => a.svc.replication.requestPoint())),
    );
    const pitAllSeconds = (performance.now() - t1) / 1000;
    say(`a PIT of every server: ${pitAllSeconds.toFixed(1)} s`);

    const repo = await openRepository(String(config.repository), {
      keyFile: path.join(dataDir, "keys", "repo.key"),
    });
    cleanups.push(() => repo.close());
    const pits = new Map((await listPits(repo)).map((p) => [p.id, p]));
    const made = points.map((p) => (p.pitId ? pits.get(p.pitId) : undefined));
    const readBack: FleetResult["readBack"] = [];
    if (o.readBack) {
      // One server of each replicator: its PIT read back whole and compared with its image.
      for (const r of placed) {
        const i = agents.findIndex((a) => r.assignedServers.includes(a.serverId));
        const pit: Pit | undefined = made[i];
        if (i < 0 || !pit) continue;
        const out = path.join(o.dir, `out-${agents[i]!.name}.img`);
        await exportDisk(repo, pit, 0, out);
        const equal = (await sha256Of(out)) === (await sha256Of(agents[i]!.image));
        await rm(out);
        readBack.push({ server: agents[i]!.name, replicator: r.name, equal });
      }
    }
    const drills: FleetResult["drills"] = [];
    if (o.drills) {
      // A separate replicator's PITs reach the catalog through a reindex (docs/scale-out.md).
      const database = await openDatabase(o.databaseUrl);
      try {
        await rebuildPitCatalog(database, repo);
      } finally {
        await database.close();
      }
      // One drill per replicator, all at once: a server of its own (a device's first), that PIT.
      const chosen = placed.flatMap((r) => {
        const mine = agents
          .map((a, i) => ({ a, i }))
          .filter(({ a }) => r.assignedServers.includes(a.serverId));
        const pick = mine.find(({ a }) => a.device) ?? mine[0];
        return pick && made[pick.i] ? [{ r, ...pick, pit: made[pick.i]! }] : [];
      });
      say(`drills of ${chosen.map((c) => c.a.name).join(", ")}`);
      const t2 = performance.now();
      const jobs = await Promise.all(
        chosen.map(async (c) => {
          const { job } = await api<{ job: { id: string } }>("/api/v1/launches", {
            servers: [c.a.name],
            pit: c.pit.id,
            target: "image",
          });
          return { ...c, jobId: job.id };
        }),
      );
      for (const c of jobs) {
        const done = await until(`drill ${c.jobId}`, 600_000, async () => {
          const j = await api<{ job: { state: string; result: unknown } }>(`/api/v1/jobs/${c.jobId}`);
          return ["succeeded", "failed", "terminated"].includes(j.job.state) ? j.job : undefined;
        });
        const images = (done.result as { outputs?: { images?: string[] } } | null)?.outputs?.images ?? [];
        const equal =
          done.state === "succeeded" &&
          images.length === 1 &&
          (await sha256Of(images[0]!)) === (await sha256Of(c.a.image, c.pit.disks[0]!.sizeBytes));
        drills.push({
          server: c.a.name,
          replicator: c.r.name,
          jobId: c.jobId,
          state: done.state,
          seconds: (performance.now() - t2) / 1000,
          equal,
        });
      }
      say(`drills: ${JSON.stringify(drills)}`);
    }
    const verify = await verifyRepository(repo, {});
    const sorted = [...latencies].sort((a, b) => a - b);
    return {
      agents: o.agents,
      replicators: o.replicators,
      diskBytes: o.diskBytes,
      spread,
      initialSyncSeconds,
      ingestMBps: (o.agents * o.diskBytes) / 1e6 / initialSyncSeconds,
      pitAllSeconds,
      pits: made.filter(Boolean).length,
      api: {
        requests: sorted.length,
        p50Ms: quantile(sorted, 0.5),
        p99Ms: quantile(sorted, 0.99),
        maxMs: sorted.at(-1) ?? 0,
      },
      verifyOk: verify.ok,
      readBack,
      controlPlanes,
      repository: String(config.repository).includes("://")
        ? String(config.repository).split("://")[0]!
        : "directory",
      devices: deviceAgents,
      drills,
      ...(balancer ? { balancer: await balancer.connections() } : {}),
      cpus: os.availableParallelism(),
      loadAverage: os.loadavg(),
    };
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      agents: { type: "string", default: "30" },
      replicators: { type: "string", default: "3" },
      "disk-mib": { type: "string", default: "16" },
      "control-planes": { type: "string", default: "2" },
      repo: { type: "string" },
      pg: { type: "string" },
    },
  });
  const admin = values.pg ?? process.env.LIFEBOAT_TEST_PG_URL;
  if (!admin) throw new Error("give --pg postgres://SUPERUSER@HOST/postgres (or LIFEBOAT_TEST_PG_URL)");
  const name = `lbscale_${randomBytes(4).toString("hex")}`;
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  await client.query(`CREATE DATABASE ${name}`);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-scale-"));
  try {
    const r = await runPoolFleet({
      dir,
      databaseUrl: url.toString(),
      agents: Number(values.agents),
      replicators: Number(values.replicators),
      diskBytes: Number(values["disk-mib"]) * 1024 * 1024,
      readBack: true,
      controlPlanes: Number(values["control-planes"]),
      ...(values.repo !== undefined ? { repository: values.repo } : {}),
      progress: (l) => process.stderr.write(`scale: ${l}\n`),
    });
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await client.end();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename))
  await main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
