/**
 * The replicator pool at fleet size: one control plane on PostgreSQL, R
 * replicator processes (`lifeboat replicator start`) writing one repository,
 * N agents (in this process) replicating image files of random bytes. It
 * measures the aggregate ingest of the initial syncs (every agent started
 * at once until all are CONTINUOUS), the time to a PIT of every server, and
 * the control plane's API latency (GET /api/v1/servers, polled while the
 * syncs run). test/e2e/pool-fleet.slow.test.ts runs it small and checks it.
 *
 *   node dist/bench/scale.js [--agents 30] [--replicators 3] [--disk-mib 16] [--pg URL]
 *
 * --pg (default: LIFEBOAT_TEST_PG_URL) is a superuser URL; a database is
 * created for the run and dropped after it. Nothing needs root.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { AgentService } from "../src/agent/service.js";
import { installAgent } from "../src/agent/install.js";
import { initServer } from "../src/control/init.js";
import { createApiDispatcher, fetchJson } from "../src/net/index.js";
import { type Pit, exportDisk, listPits, openRepository, verifyRepository } from "../src/store/index.js";
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

const quantile = (sorted: number[], q: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : 0;

export async function runPoolFleet(o: FleetOptions): Promise<FleetResult> {
  const say = o.progress ?? (() => undefined);
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    const dataDir = path.join(o.dir, "server");
    const init = await initServer({ dataDir, databaseUrl: o.databaseUrl });
    const configFile = path.join(dataDir, "config.json");
    const config = JSON.parse(await readFile(configFile, "utf8")) as Record<string, unknown>;
    // Long enough that a replicator on a loaded machine is not taken for dead in the middle of the run.
    config.heartbeatTimeoutSeconds = 60;
    await writeFile(configFile, JSON.stringify(config));
    // The control plane in a process of its own, so that its latency is its own, not the agents'.
    const port = await freePort();
    const cp = spawn(
      process.execPath,
      [BIN, "server", "start", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`],
      { stdio: ["ignore", "ignore", "inherit"] },
    );
    const cpExited = new Promise((r) => cp.once("close", r));
    cleanups.push(async () => {
      cp.kill("SIGTERM");
      await Promise.race([cpExited, sleep(15_000)]);
      cp.kill("SIGKILL");
    });
    const server = { url: `https://127.0.0.1:${port}` };
    const caFile = path.join(dataDir, "ca.pem");
    const caPem = await readFile(caFile, "utf8");
    const operator = createApiDispatcher({ caPem });
    cleanups.push(() => operator.close());
    const api = <T>(p: string, b?: unknown) =>
      fetchJson<T>(operator, `${server.url}${p}`, {
        ...(b !== undefined ? { method: "POST", body: b } : {}),
        headers: { authorization: `Bearer ${init.adminApiKey}` },
      });
    type Rep = { id: string; name: string; online: boolean; assignedServers: string[] };
    const replicators = () => api<{ replicators: Rep[] }>("/api/v1/replicators").then((r) => r.replicators);
    await until("the control plane", 60_000, () =>
      replicators().then(
        () => true,
        () => false,
      ),
    );

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
        { stdio: ["ignore", "ignore", "inherit"] },
      );
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

    say(`installing ${o.agents} agents (${o.diskBytes} bytes each)`);
    const installed: { name: string; serverId: string; image: string; configDir: string }[] = [];
    for (let i = 0; i < o.agents; i++) {
      const image = path.join(o.dir, `disk${i}.img`);
      await writeFile(image, randomBytes(o.diskBytes));
      const { token } = await api<{ token: string }>("/api/v1/tokens", { role: "agent", uses: 1 });
      const configDir = path.join(o.dir, `agent${i}`);
      const r = await installAgent({
        configDir,
        endpoint: server.url,
        token,
        caPem,
        hostname: `host${String(i).padStart(3, "0")}`,
        blockSize: 65536,
        disks: [{ path: image, kind: "image", id: image, sizeBytes: o.diskBytes }],
        inventory: {},
      });
      installed.push({ name: r.serverName, serverId: r.serverId, image, configDir });
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
        const equal = (await readFile(out)).equals(await readFile(agents[i]!.image));
        await rm(out);
        readBack.push({ server: agents[i]!.name, replicator: r.name, equal });
      }
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
