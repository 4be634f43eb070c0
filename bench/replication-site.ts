/**
 * The recovery site of the replication benchmark: a real `lifeboat server
 * start` (control plane and embedded replicator) as a child process on
 * loopback, so that its CPU time and peak RSS are measured apart from the
 * agent's, and one agent identity registered with it through an install
 * token, as `agent install` would.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readFileSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Duplex } from "node:stream";
import { BLOCK_THREAD_NAME, CHUNK_THREAD_NAME } from "../src/base/workers.js";
import { createApiDispatcher, fetchJson, generateKeyAndCsr } from "../src/net/index.js";
import { connectWire } from "../src/wire/index.js";
import { THREAD_ROLES, type ThreadRole } from "./replication-report.js";
import { ROOT, run } from "./sys.js";

const CLI = path.join(ROOT, "bin", "lifeboat.js");
/** Linux's USER_HZ: /proc/<pid>/stat counts CPU time in these ticks. */
const CLK_TCK = 100;

export interface AgentIdentity {
  serverId: string;
  serverName: string;
  certPem: string;
  keyPem: string;
}

export interface ServerChild {
  pid: number;
  /** https://host:port of its API. */
  url: string;
  dataDir: string;
  /** The server's repository directory (the embedded replicator writes it). */
  repo: string;
  register(hostname: string): Promise<AgentIdentity>;
  /** A wire connection to the embedded replicator with `who`'s certificate. */
  connect(who: AgentIdentity): Promise<Duplex>;
  /** SIGTERM, then SIGKILL after 10 s. */
  stop(): Promise<void>;
}

/** `server init` in `dataDir`, then `server start` on 127.0.0.1 with a free port. */
export async function startServerChild(dataDir: string): Promise<ServerChild> {
  run(process.execPath, [CLI, "server", "init", "--data-dir", dataDir, "--listen", "127.0.0.1:0"]);
  // LIFEBOAT_BENCH_SERVER_PROF=DIR: a V8 CPU profile of the server, written when it stops.
  const prof = process.env.LIFEBOAT_BENCH_SERVER_PROF;
  const child = spawn(
    process.execPath,
    [
      ...(prof ? ["--cpu-prof", "--cpu-prof-dir", prof] : []),
      CLI,
      "server",
      "start",
      "--data-dir",
      dataDir,
      "--listen",
      "127.0.0.1:0",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const { host, port } = await listening(child);
  const url = `https://${host}:${port}`;
  const caPem = readFileSync(path.join(dataDir, "ca.pem"), "utf8");
  const adminKey = readFileSync(path.join(dataDir, "admin-api.key"), "utf8").trim();
  return {
    pid: child.pid!,
    url,
    dataDir,
    repo: path.join(dataDir, "repo"),
    async register(hostname) {
      const d = createApiDispatcher({ caPem });
      try {
        const { token } = await fetchJson<{ token: string }>(d, `${url}/api/v1/tokens`, {
          headers: { authorization: `Bearer ${adminKey}` },
          body: { role: "agent", uses: 1 },
        });
        const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: hostname });
        const r = await fetchJson<{ serverId: string; serverName: string; certificatePem: string }>(
          d,
          `${url}/api/v1/register`,
          { body: { token, csr: csrPem, hostname } },
        );
        return { serverId: r.serverId, serverName: r.serverName, certPem: r.certificatePem, keyPem };
      } finally {
        await d.close();
      }
    },
    connect: (who) => connectWire({ host, port, caPem, certPem: who.certPem, keyPem: who.keyPem }),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Waits for the server's "listening" log line and returns its address. */
async function listening(child: ChildProcess): Promise<{ host: string; port: number }> {
  let head = "";
  const address = await new Promise<string>((resolve, reject) => {
    child.stderr!.on("data", (d: Buffer) => {
      head += d.toString();
      const m = /"address":"([^"]+)"[^\n]*"msg":"listening"/.exec(head);
      if (m?.[1]) resolve(m[1]);
    });
    child.once("exit", (code) =>
      reject(new Error(`lifeboat server exited with ${code}: ${head.slice(-2000)}`)),
    );
  });
  // Keep draining its log so the pipe never blocks the server; LIFEBOAT_BENCH_SERVER_LOG=FILE keeps it.
  child.stderr!.removeAllListeners("data");
  const keep = process.env.LIFEBOAT_BENCH_SERVER_LOG;
  if (keep) {
    writeFileSync(keep, head);
    child.stderr!.pipe(createWriteStream(keep, { flags: "a" }));
  } else child.stderr!.resume();
  const colon = address.lastIndexOf(":");
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/** utime + stime of a process and all its threads, in seconds. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/**
 * CPU seconds (user and system) of the live threads of `pid` by role: the main
 * thread (whose id is the pid), the agent's block workers and the
 * repository's chunk workers (threads the pools name lifeboat-block and
 * lifeboat-chunk), and every other thread (libuv's file I/O pool, V8's
 * garbage-collection and compiler helpers). Differences of two readings give
 * a step's split, as long as no thread of a role exits in between.
 */
export function threadCpuSeconds(pid: number): Record<ThreadRole, { user: number; system: number }> {
  const out = Object.fromEntries(THREAD_ROLES.map((r) => [r, { user: 0, system: 0 }])) as Record<
    ThreadRole,
    { user: number; system: number }
  >;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    let comm: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
    } catch {
      continue; // the thread ended meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const role: ThreadRole =
      tid === String(pid)
        ? "main"
        : comm === BLOCK_THREAD_NAME
          ? "block workers"
          : comm === CHUNK_THREAD_NAME
            ? "chunk workers"
            : "other threads";
    out[role].user += Number(fields[11]) / CLK_TCK;
    out[role].system += Number(fields[12]) / CLK_TCK;
  }
  return out;
}

/** Peak resident set of a running process (VmHWM), in MiB. */
export function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}
