/**
 * A locked-down site in network namespaces: a `source` namespace with no
 * default route and no DNS server (a hosts entry only), joined by a veth pair
 * to a `recovery` namespace, and an nftables firewall in `source` that
 * accepts only TCP 443 to the recovery site's address and drops and counts
 * everything else (IPv6 is off in `source`, so that router solicitations do
 * not count as attempts). More names for the recovery site's address go into
 * the source's hosts file (`names`), and a site's own CA into the source's
 * system trust store (`trust`), as on a managed server of that site.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { BIN } from "./cli.js";

const run = promisify(execFile);

export interface PrivateNetwork {
  source: string;
  recovery: string;
  /** The recovery site's address, as the source sees it. */
  recoveryAddress: string;
  sourceAddress: string;
  /** Resolves to recoveryAddress in `source` (its hosts file), nowhere else; so do `names`. */
  hostName: string;
  /** `lifeboat ARGS` in namespace `ns`, to completion; the environment is passed as is plus `env`. */
  lifeboat(
    ns: string,
    args: string[],
    opts?: { env?: Record<string, string>; stdin?: string },
  ): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** `lifeboat ARGS` in namespace `ns`, left running. */
  service(ns: string, args: string[]): Service;
  /** Any command in namespace `ns`, left running. */
  spawn(ns: string, cmd: string, args: string[], opts?: { env?: Record<string, string> }): Service;
  /** Any command in namespace `ns`. */
  exec(
    ns: string,
    cmd: string,
    args: string[],
    opts?: { env?: Record<string, string>; stdin?: string },
  ): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /**
   * Adds a CA certificate (PEM) to the system trust store that `source` sees
   * (/etc/ssl/certs/ca-certificates.crt: curl's and openssl's default), as a
   * site's own CA is on its managed servers. Nothing outside `source` changes.
   */
  trust(caPem: string): Promise<void>;
  /** Packets the source's firewall dropped so far, outbound and inbound. */
  dropped(): Promise<{ out: number; in: number }>;
  close(): Promise<void>;
}

export interface Service {
  child: ChildProcess;
  /** stdout and stderr so far. */
  log(): string;
  exited: Promise<number | null>;
}

const FW = "lifeboat_site";

export async function createPrivateNetwork(opts: { names?: string[] } = {}): Promise<PrivateNetwork> {
  const id = `${process.pid % 10000}${Math.floor(Math.random() * 90 + 10)}`;
  const source = `lbsrc${id}`;
  const recovery = `lbrec${id}`;
  const net = `10.${200 + (process.pid % 50)}.${Math.floor(Math.random() * 250)}`;
  const recoveryAddress = `${net}.1`;
  const sourceAddress = `${net}.2`;
  const hostName = "drsite.lifeboat.test";
  const etc = path.join("/etc/netns", source);
  const ip = (...args: string[]) => run("ip", args);
  const inNs = (ns: string, cmd: string, args: string[]) => run("ip", ["netns", "exec", ns, cmd, ...args]);
  const close = async () => {
    await ip("netns", "del", source).catch(() => undefined);
    await ip("netns", "del", recovery).catch(() => undefined);
    await fs.rm(etc, { recursive: true, force: true });
  };
  try {
    await ip("netns", "add", source);
    await ip("netns", "add", recovery);
    await inNs(source, "sysctl", ["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    await inNs(source, "sysctl", ["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    await inNs(recovery, "sysctl", ["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    await ip(
      "link",
      "add",
      `vs${id}`,
      "netns",
      source,
      "type",
      "veth",
      "peer",
      "name",
      `vr${id}`,
      "netns",
      recovery,
    );
    await ip("-n", source, "addr", "add", `${sourceAddress}/24`, "dev", `vs${id}`);
    await ip("-n", recovery, "addr", "add", `${recoveryAddress}/24`, "dev", `vr${id}`);
    for (const [ns, dev] of [
      [source, `vs${id}`],
      [recovery, `vr${id}`],
    ] as const) {
      await ip("-n", ns, "link", "set", "lo", "up");
      await ip("-n", ns, "link", "set", dev, "up");
    }
    // `ip netns exec` puts these over /etc/hosts and /etc/resolv.conf: a hosts entry, no name server.
    await fs.mkdir(etc, { recursive: true });
    await fs.writeFile(
      path.join(etc, "hosts"),
      `127.0.0.1 localhost\n${recoveryAddress} ${[hostName, ...(opts.names ?? [])].join(" ")}\n`,
    );
    await fs.writeFile(path.join(etc, "resolv.conf"), "# no name server on this site\n");
    const rules = `table inet ${FW} {
  counter dropped_out { }
  counter dropped_in { }
  chain output {
    type filter hook output priority 0; policy accept;
    oif "lo" accept
    ip daddr ${recoveryAddress} tcp dport 443 accept
    counter name "dropped_out" drop
  }
  chain input {
    type filter hook input priority 0; policy accept;
    iif "lo" accept
    ct state established,related accept
    counter name "dropped_in" drop
  }
}
`;
    // Not in /etc/netns/SOURCE: `ip netns exec` would try to mount it over /etc.
    const rulesFile = path.join(os.tmpdir(), `lifeboat-${source}.nft`);
    await fs.writeFile(rulesFile, rules);
    try {
      await inNs(source, "nft", ["-f", rulesFile]);
    } finally {
      await fs.rm(rulesFile, { force: true });
    }
  } catch (err) {
    await close();
    throw err;
  }
  const exec = (
    ns: string,
    cmd: string,
    args: string[],
    opts: { env?: Record<string, string>; stdin?: string } = {},
  ) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn("ip", ["netns", "exec", ns, cmd, ...args], {
        env: { ...process.env, ...opts.env },
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.once("error", reject);
      child.once("close", (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(opts.stdin ?? "");
    });
  const start = (ns: string, cmd: string, args: string[], opts: { env?: Record<string, string> } = {}) => {
    const child = spawn("ip", ["netns", "exec", ns, cmd, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...opts.env },
    });
    let log = "";
    child.stdout.on("data", (d: Buffer) => (log += d.toString()));
    child.stderr.on("data", (d: Buffer) => (log += d.toString()));
    const exited = new Promise<number | null>((r) => child.once("close", (code) => r(code)));
    return { child, log: () => log, exited };
  };
  return {
    source,
    recovery,
    recoveryAddress,
    sourceAddress,
    hostName,
    exec,
    lifeboat: (ns, args, opts = {}) => exec(ns, process.execPath, [BIN, ...args], opts),
    service: (ns, args) => start(ns, process.execPath, [BIN, ...args]),
    spawn: start,
    trust: async (caPem) => {
      // `ip netns exec` mounts /etc/netns/SOURCE/ssl over /etc/ssl: a copy of the host's, plus the CA.
      const ssl = path.join(etc, "ssl");
      await fs.rm(ssl, { recursive: true, force: true });
      await fs.mkdir(ssl);
      await fs.cp("/etc/ssl/certs", path.join(ssl, "certs"), { recursive: true, verbatimSymlinks: true });
      await fs.copyFile("/etc/ssl/openssl.cnf", path.join(ssl, "openssl.cnf")).catch(() => undefined);
      const bundle = path.join(ssl, "certs", "ca-certificates.crt");
      const system = await fs.readFile(bundle, "utf8").catch(() => "");
      await fs.rm(bundle, { force: true });
      await fs.writeFile(bundle, `${system}${system && !system.endsWith("\n") ? "\n" : ""}${caPem.trim()}\n`);
    },
    dropped: async () => {
      const { stdout } = await inNs(source, "nft", ["-j", "list", "counters", "table", "inet", FW]);
      const counters = (JSON.parse(stdout) as { nftables: { counter?: { name: string; packets: number } }[] })
        .nftables;
      const packets = (name: string) => counters.find((c) => c.counter?.name === name)?.counter?.packets ?? 0;
      return { out: packets("dropped_out"), in: packets("dropped_in") };
    },
    close,
  };
}
