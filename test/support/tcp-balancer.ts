/**
 * A TCP pass-through load balancer for tests of several control-plane
 * instances: HAProxy (Debian's `haproxy` package) in `mode tcp` on
 * 127.0.0.1 and a free port, round robin over the given backends, with
 * plain TCP health checks every 500 ms (a backend that refuses connections
 * is out after two failures) and a failed connect retried on another backend
 * (`option redispatch`). TLS is not terminated: mutual TLS and the wire
 * protocol end at Lifeboat, as in production.
 *
 * The config is generated into a temporary directory with an admin socket;
 * `connections()` reads each backend's total connection count from it
 * ("show stat"), so that a test can say which instance got the clients.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export interface Backend {
  name: string;
  host: string;
  port: number;
}

export interface TcpBalancer {
  host: string;
  port: number;
  /** https://127.0.0.1:PORT: what clients are given as the endpoint. */
  url: string;
  /** Per backend: connections it was given so far, and whether HAProxy's check sees it up. */
  connections(): Promise<Record<string, { total: number; current: number; up: boolean }>>;
  /** What HAProxy printed (warnings, backends going down). */
  log(): string;
  stop(): Promise<void>;
}

/** Why no balancer can run here (HAProxy missing), or null. */
export function tcpBalancerMissing(): string | null {
  const r = spawnSync("haproxy", ["-v"], { stdio: "ignore" });
  return r.status === 0 ? null : "haproxy is not installed (apt-get install haproxy)";
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** HAProxy's configuration for `backends`, listening on host:port, admin socket at `socket`. */
export function balancerConfig(o: {
  host: string;
  port: number;
  socket: string;
  backends: Backend[];
}): string {
  return [
    "global",
    `  stats socket ${o.socket} mode 600 level admin`,
    "  maxconn 4096",
    "defaults",
    "  mode tcp",
    "  timeout connect 2s",
    // Agents' replication streams and event followers are long-lived connections.
    "  timeout client 1h",
    "  timeout server 1h",
    "  retries 3",
    "  option redispatch",
    "frontend lifeboat",
    `  bind ${o.host}:${o.port}`,
    "  default_backend control-planes",
    "backend control-planes",
    "  balance roundrobin",
    "  default-server inter 500ms fall 2 rise 1",
    ...o.backends.map((b) => `  server ${b.name} ${b.host}:${b.port} check`),
    "",
  ].join("\n");
}

export async function startTcpBalancer(backends: Backend[]): Promise<TcpBalancer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-haproxy-"));
  const host = "127.0.0.1";
  const port = await freePort();
  const socket = path.join(dir, "admin.sock");
  const cfg = path.join(dir, "haproxy.cfg");
  await writeFile(cfg, balancerConfig({ host, port, socket, backends }));
  // -db: stay in the foreground, no daemon (the test owns the process).
  const child: ChildProcess = spawn("haproxy", ["-db", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stdout!.on("data", (d: Buffer) => (log += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((r) => child.once("close", () => r()));
  let gone = false;
  void exited.then(() => (gone = true));

  const admin = (command: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const c = net.createConnection(socket);
      let out = "";
      c.setEncoding("utf8");
      c.on("data", (d: string) => (out += d));
      c.once("error", reject);
      c.once("close", () => resolve(out));
      c.write(`${command}\n`);
    });

  const stop = async () => {
    if (!gone) {
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (!gone) child.kill("SIGKILL");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };

  // Ready once it accepts on the admin socket and the frontend.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await admin("show info").then(
      (s) => s.includes("Name: HAProxy"),
      () => false,
    );
    if (ok) break;
    if (gone || Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    host,
    port,
    url: `https://${host}:${port}`,
    log: () => log,
    async connections() {
      // CSV: "# pxname,svname,qcur,qmax,scur,smax,slim,stot,...,status,..."
      const [header = "", ...rows] = (await admin("show stat")).split("\n").filter((l) => l.trim());
      const cols = header.replace(/^# /, "").split(",");
      const at = (name: string) => cols.indexOf(name);
      const out: Record<string, { total: number; current: number; up: boolean }> = {};
      for (const row of rows) {
        const f = row.split(",");
        if (f[at("pxname")] !== "control-planes" || ["FRONTEND", "BACKEND"].includes(f[at("svname")]!))
          continue;
        out[f[at("svname")]!] = {
          total: Number(f[at("stot")]),
          current: Number(f[at("scur")]),
          up: (f[at("status")] ?? "").startsWith("UP"),
        };
      }
      return out;
    },
    stop,
  };
}
