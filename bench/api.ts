/**
 * API load benchmark: a real `lifeboat server start` process on loopback,
 * 1,000 simulated agents with real client certificates, heartbeats at one per
 * 5 s per agent (200/s) over mutual TLS, and operator reads (servers list and
 * show) beside them, on SQLite and then on PostgreSQL. Reports p50/p99/max
 * latency per kind of request and the server's CPU (from /proc/<pid>/stat).
 *
 *   node dist/bench/api.js [--agents N] [--seconds S] [--db sqlite|postgres|both]
 *                          [--pg-url URL] [--reads-per-second R] [--profile DIR]
 *                          [--results-dir DIR]
 *
 * --profile DIR writes a V8 CPU profile of each server process into DIR.
 *
 * PostgreSQL: a database is created on the server of --pg-url or
 * LIFEBOAT_TEST_PG_URL (a user allowed to CREATE DATABASE) and dropped after.
 * A full run (defaults) writes bench/results/api.md; other runs write
 * bench/work/results/api.md; `--results-dir` overrides both.
 *
 * The load is open-loop: each agent sends on its own schedule whether or not
 * earlier requests have been answered, so a slow server shows as latency, not
 * as a lower request rate. Agents keep their connection between beats, as the
 * agent does (keepAliveMs), so the figures are of requests, not handshakes;
 * registration (one handshake and one certificate each) is timed separately.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import type { Dispatcher } from "undici";
import { initServer } from "../src/control/index.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../src/net/index.js";
import { RESULTS, ROOT, WORK } from "./sys.js";

const BIN = path.join(ROOT, "bin", "lifeboat.js");
const BEAT_MS = 5000;
const CLK_TCK = 100;

type Closable = Dispatcher & { close(): Promise<void> };

interface Options {
  agents: number;
  seconds: number;
  dbs: ("sqlite" | "postgres")[];
  pgUrl: string | undefined;
  readsPerSecond: number;
  profile: string | undefined;
  full: boolean;
  /** Where api.md goes (run.js sets it); otherwise bench/results/ for a full run, else bench/work/results/. */
  resultsDir: string | undefined;
}

interface Stats {
  count: number;
  errors: number;
  p50: number;
  p99: number;
  max: number;
}

interface DbResult {
  db: string;
  registration: { agents: number; seconds: number; perSecond: number };
  heartbeats: Stats & { perSecond: number };
  list: Stats;
  show: Stats;
  serverCpuPercent: number;
  benchCpuPercent: number;
  serverRssMiB: number;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      agents: { type: "string" },
      seconds: { type: "string" },
      db: { type: "string" },
      "pg-url": { type: "string" },
      "reads-per-second": { type: "string" },
      profile: { type: "string" },
      "results-dir": { type: "string" },
    },
  });
  const db = values.db ?? "both";
  if (!["sqlite", "postgres", "both"].includes(db)) throw new Error(`--db sqlite|postgres|both, got ${db}`);
  const agents = Number(values.agents ?? 1000);
  const seconds = Number(values.seconds ?? 30);
  const readsPerSecond = Number(values["reads-per-second"] ?? 10);
  return {
    agents,
    seconds,
    dbs: db === "both" ? ["sqlite", "postgres"] : [db as "sqlite" | "postgres"],
    pgUrl: values["pg-url"] ?? process.env.LIFEBOAT_TEST_PG_URL,
    readsPerSecond,
    profile: values.profile,
    resultsDir: values["results-dir"],
    full:
      values.profile === undefined &&
      agents === 1000 &&
      seconds === 30 &&
      db === "both" &&
      readsPerSecond === 10,
  };
}

function log(msg: string): void {
  process.stderr.write(`[api-bench] ${msg}\n`);
}

function stats(latencies: number[], errors: number): Stats {
  const s = [...latencies].sort((a, b) => a - b);
  const at = (q: number) => (s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!);
  return { count: s.length, errors, p50: at(0.5), p99: at(0.99), max: s.at(-1) ?? NaN };
}

/** utime + stime of a process, in clock ticks. */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

async function startServer(dataDir: string, profile?: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      ...(profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : []),
      BIN,
      "server",
      "start",
      "--data-dir",
      dataDir,
      "--listen",
      "127.0.0.1:0",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let head = "";
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer) => {
      head += d.toString();
      const m = /"address":"([^"]+)"[^\n]*"msg":"listening"/.exec(head);
      if (m) {
        resolve(`https://${m[1]}`);
        head = "";
      }
    };
    child.stderr.on("data", onData);
    child.once("exit", (code) => reject(new Error(`server exited with ${code}: ${head.slice(-2000)}`)));
  });
  // Keep draining its logs (one line per request) so the pipe never blocks the server.
  child.stderr.removeAllListeners("data");
  child.stderr.resume();
  return { child, url };
}

async function registerAgents(
  url: string,
  caPem: string,
  adminKey: string,
  n: number,
): Promise<{ dispatchers: Closable[]; ids: string[]; seconds: number }> {
  const operator = createApiDispatcher({ caPem });
  const auth = { authorization: `Bearer ${adminKey}` };
  const dispatchers: Closable[] = [];
  const ids: string[] = [];
  const t0 = performance.now();
  try {
    for (let done = 0; done < n;) {
      const batch = Math.min(10_000, n - done);
      const { token } = await fetchJson<{ token: string }>(operator, `${url}/api/v1/tokens`, {
        headers: auth,
        body: { role: "agent", uses: batch, ttlSeconds: 3600 },
      });
      let next = done;
      const end = done + batch;
      const worker = async () => {
        while (next < end) {
          const i = next++;
          const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: `bench-${i}` });
          const r = await fetchJson<{ serverId: string; certificatePem: string }>(
            operator,
            `${url}/api/v1/register`,
            { body: { token, csr: csrPem, hostname: `bench-${String(i).padStart(5, "0")}` } },
          );
          ids[i] = r.serverId;
          dispatchers[i] = createApiDispatcher({
            caPem,
            clientCertPem: r.certificatePem,
            clientKeyPem: keyPem,
            keepAliveMs: 60_000,
          });
        }
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      done = end;
    }
  } finally {
    await operator.close();
  }
  return { dispatchers, ids, seconds: (performance.now() - t0) / 1000 };
}

/** Calls `fire(k)` for k = 0, 1, ... at `perSecond`, open-loop, for `ms`; resolves when all answered. */
async function paced(perSecond: number, ms: number, fire: (k: number) => Promise<void>): Promise<void> {
  const pending: Promise<void>[] = [];
  const start = performance.now();
  const total = Math.floor((perSecond * ms) / 1000);
  let k = 0;
  while (k < total) {
    const due = Math.floor(((performance.now() - start) * perSecond) / 1000);
    while (k < Math.min(due + 1, total)) pending.push(fire(k++));
    await new Promise((r) => setTimeout(r, Math.max(1, 1000 / perSecond)));
  }
  await Promise.all(pending);
}

async function timed(into: number[], errors: { n: number }, fn: () => Promise<unknown>): Promise<void> {
  const t = performance.now();
  try {
    await fn();
    into.push(performance.now() - t);
  } catch {
    errors.n++;
  }
}

async function runOne(db: "sqlite" | "postgres", opts: Options): Promise<DbResult | string> {
  const dataDir = path.join(WORK, `api-${db}`);
  rmSync(dataDir, { recursive: true, force: true });
  let databaseUrl: string | undefined;
  let dropDatabase = async () => {};
  if (db === "postgres") {
    if (opts.pgUrl === undefined) return "PostgreSQL skipped: give --pg-url or LIFEBOAT_TEST_PG_URL";
    const name = `lifeboat_bench_${process.pid}`;
    const admin = new pg.Client({ connectionString: opts.pgUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${name}`);
    await admin.query(`create database ${name}`);
    await admin.end();
    const u = new URL(opts.pgUrl);
    u.pathname = `/${name}`;
    databaseUrl = u.toString();
    dropDatabase = async () => {
      const c = new pg.Client({ connectionString: opts.pgUrl });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    };
  }
  const init = await initServer({ dataDir, ...(databaseUrl ? { databaseUrl } : {}) });
  const configFile = path.join(dataDir, "config.json");
  const config = JSON.parse(readFileSync(configFile, "utf8")) as Record<string, unknown>;
  writeFileSync(configFile, JSON.stringify({ ...config, registerRateLimitPerMinute: 1_000_000 }));
  const caPem = readFileSync(path.join(dataDir, "ca.pem"), "utf8");
  const { child, url } = await startServer(dataDir, opts.profile);
  const pid = child.pid!;
  const reader = createApiDispatcher({ caPem, keepAliveMs: 60_000 });
  let agents: Closable[] = [];
  try {
    log(`${db}: registering ${opts.agents} agents`);
    const reg = await registerAgents(url, caPem, init.adminApiKey, opts.agents);
    agents = reg.dispatchers;
    // Warm-up: one beat each opens every connection before measuring (16 handshakes at a time) and
    // moves every server to the state the timed beats report: the window measures steady heartbeats,
    // not 1,000 changes of state (each one an event and an audit record under their append locks).
    let w = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (w < agents.length)
          await fetchJson(agents[w++]!, `${url}/api/v1/agent/heartbeat`, { body: { state: "CONTINUOUS" } });
      }),
    );
    log(
      `${db}: ${opts.seconds} s of heartbeats at ${(opts.agents * 1000) / BEAT_MS}/s and ${opts.readsPerSecond} reads/s`,
    );
    const beats: number[] = [];
    const beatErrors = { n: 0 };
    const lists: number[] = [];
    const listErrors = { n: 0 };
    const shows: number[] = [];
    const showErrors = { n: 0 };
    const auth = { authorization: `Bearer ${init.adminApiKey}` };
    const cpu0 = cpuTicks(pid);
    const self0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all([
      paced((opts.agents * 1000) / BEAT_MS, opts.seconds * 1000, (k) =>
        timed(beats, beatErrors, () =>
          fetchJson(agents[k % agents.length]!, `${url}/api/v1/agent/heartbeat`, {
            body: { state: "CONTINUOUS", lagSeconds: k % 7, backlogBytes: (k % 13) * 65536 },
          }),
        ),
      ),
      paced(opts.readsPerSecond, opts.seconds * 1000, (k) =>
        k % 5 === 0
          ? timed(lists, listErrors, () => fetchJson(reader, `${url}/api/v1/servers`, { headers: auth }))
          : timed(shows, showErrors, () =>
              fetchJson(reader, `${url}/api/v1/servers/${reg.ids[(k * 7919) % reg.ids.length]}`, {
                headers: auth,
              }),
            ),
      ),
    ]);
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = (cpuTicks(pid) - cpu0) / CLK_TCK / elapsed;
    const self = process.cpuUsage(self0);
    return {
      db,
      registration: {
        agents: opts.agents,
        seconds: Math.round(reg.seconds * 10) / 10,
        perSecond: Math.round(opts.agents / reg.seconds),
      },
      heartbeats: { ...stats(beats, beatErrors.n), perSecond: Math.round(beats.length / elapsed) },
      list: stats(lists, listErrors.n),
      show: stats(shows, showErrors.n),
      serverCpuPercent: Math.round(cpu * 100),
      benchCpuPercent: Math.round(((self.user + self.system) / 1e6 / elapsed) * 100),
      serverRssMiB: rssMiB(pid),
    };
  } finally {
    await Promise.all([reader, ...agents].map((d) => d.close().catch(() => undefined)));
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    await dropDatabase();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

function render(results: DbResult[], notes: string[], opts: Options, loadBefore: number[]): string {
  const ms = (n: number) => (Number.isNaN(n) ? "-" : n.toFixed(1));
  const row = (db: string, what: string, s: Stats, rate: string) =>
    `| ${db} | ${what} | ${s.count} | ${s.errors} | ${rate} | ${ms(s.p50)} | ${ms(s.p99)} | ${ms(s.max)} |`;
  const lines = [
    "# API load benchmark",
    "",
    `Generated ${new Date().toISOString()} by \`node dist/bench/api.js\` on ${os.cpus().length} CPU(s) ` +
      `(${os.cpus()[0]?.model ?? "?"}), Node ${process.version}, load average before the run ` +
      `${loadBefore.map((x) => x.toFixed(1)).join(" ")}.`,
    "",
    `${opts.agents} agents registered with real certificates; heartbeats over mutual TLS at one per ` +
      `${BEAT_MS / 1000} s per agent (${(opts.agents * 1000) / BEAT_MS}/s), plus ${opts.readsPerSecond} operator ` +
      `reads/s (1 in 5 \`GET /api/v1/servers\` of all ${opts.agents} servers, the rest \`GET /api/v1/servers/ID\`), ` +
      `${opts.seconds} s per database, open-loop. A warm-up beat from every agent before the timed window ` +
      "opens its connection and sets its server's state to the one the timed beats repeat (CONTINUOUS), so " +
      "the window measures steady heartbeats; a change of state also appends an event and an audit record " +
      "under their append locks, and 1,000 of them at once are not in these figures. The server and this " +
      "client share the machine's cores.",
    "",
    "| database | request | count | errors | rate | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|---|---|---|",
    ...results.flatMap((r) => [
      row(r.db, "heartbeat", r.heartbeats, `${r.heartbeats.perSecond}/s`),
      row(r.db, "servers list", r.list, "-"),
      row(r.db, "server show", r.show, "-"),
    ]),
    "",
    "| database | server CPU (of one core) | server RSS | bench client CPU | registration |",
    "|---|---|---|---|---|",
    ...results.map(
      (r) =>
        `| ${r.db} | ${r.serverCpuPercent}% | ${r.serverRssMiB} MiB | ${r.benchCpuPercent}% | ` +
        `${r.registration.agents} in ${r.registration.seconds} s (${r.registration.perSecond}/s) |`,
    ),
    "",
    "Target: heartbeat p99 under 50 ms at this load. PostgreSQL's own CPU is not counted in the server's. " +
      `Load average after the run: ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(" ")} (other work on the machine competes with both processes).`,
    ...(notes.length > 0 ? ["", ...notes.map((n) => `- ${n}`)] : []),
    "",
  ];
  return lines.join("\n");
}

async function main(): Promise<number> {
  const opts = options();
  const loadBefore = os.loadavg();
  const results: DbResult[] = [];
  const notes: string[] = [];
  for (const db of opts.dbs) {
    const r = await runOne(db, opts);
    if (typeof r === "string") notes.push(r);
    else results.push(r);
  }
  const markdown = render(results, notes, opts, loadBefore);
  const dir = opts.resultsDir ?? (opts.full && notes.length === 0 ? RESULTS : path.join(WORK, "results"));
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "api.md");
  writeFileSync(`${file}.tmp`, markdown);
  renameSync(`${file}.tmp`, file);
  process.stdout.write(markdown);
  log(`results written to ${path.relative(process.cwd(), file)}`);
  const failed = results.some((r) => r.heartbeats.errors + r.list.errors + r.show.errors > 0);
  return failed ? 1 : 0;
}

main().then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
