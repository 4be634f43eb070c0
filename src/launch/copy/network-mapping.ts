import {
  type AddressMapping,
  type Replacements,
  describeReplacements,
  renameInHosts,
  replaceAddresses,
} from "./address-map.js";
import type { ChangeLog } from "./change-log.js";
import type { CopyTree } from "./copy-tree.js";

/** Files holding network configuration, by distribution; a directory pattern is "dir/" + a name test. */
const SINGLE_FILES = [
  "/etc/hosts",
  "/etc/network/interfaces",
  "/etc/sysconfig/network/routes",
  "/etc/resolv.conf",
];
const DIRECTORIES: { dir: string; name: RegExp }[] = [
  { dir: "/etc/network/interfaces.d", name: /^[^.]/ },
  { dir: "/etc/sysconfig/network-scripts", name: /^(?:ifcfg|route6?|rule6?)-/ },
  { dir: "/etc/sysconfig/network", name: /^(?:ifcfg|ifroute)-/ },
  { dir: "/etc/netplan", name: /\.ya?ml$/ },
  { dir: "/etc/systemd/network", name: /\.network$/ },
  { dir: "/etc/NetworkManager/system-connections", name: /^[^.]/ },
];
const MAX_FILE = 1 << 20;

/** The network configuration files present in the copy, in a stable order. */
export async function networkFiles(tree: CopyTree): Promise<string[]> {
  const out: string[] = [];
  for (const f of SINGLE_FILES) if ((await tree.stat(f))?.isFile()) out.push(f);
  for (const { dir, name } of DIRECTORIES) {
    for (const n of (await tree.list(dir)) ?? []) {
      if (!name.test(n) || n.endsWith("~") || n.includes(".lifeboat-")) continue;
      const p = `${dir}/${n}`;
      if ((await tree.stat(p))?.isFile()) out.push(p);
    }
  }
  return out;
}

/**
 * Gives the copy its new host name (/etc/hostname, /etc/HOSTNAME, HOSTNAME=
 * in /etc/sysconfig/network, the old name's entries in /etc/hosts) and maps
 * its addresses in every network configuration file, exact tokens only.
 */
export async function mapNetwork(
  tree: CopyTree,
  log: ChangeLog,
  opts: { hostname?: string | undefined; addresses: AddressMapping[] },
): Promise<void> {
  const oldName = (await tree.readText("/etc/hostname"))?.trim().split(/\s+/)[0] || null;
  const newName = opts.hostname;
  if (newName !== undefined) await setHostname(tree, log, oldName, newName);
  if (opts.addresses.length === 0 && (newName === undefined || oldName === null)) return;
  for (const file of await networkFiles(tree)) {
    const before = await tree.readText(file, MAX_FILE);
    if (before === null) continue;
    let text = before;
    const done: Replacements = new Map();
    if (file === "/etc/hosts" && newName !== undefined && oldName !== null && oldName !== newName) {
      const r = renameInHosts(text, oldName, newName);
      text = r.text;
      if (r.count) done.set(`${oldName} → ${newName}`, r.count);
    }
    const a = replaceAddresses(text, opts.addresses);
    text = a.text;
    for (const [k, n] of a.replaced) done.set(k, n);
    if (text === before) continue;
    await tree.writeText(file, text);
    const total = [...done.values()].reduce((x, y) => x + y, 0);
    log.change(
      `mapped ${file}: ${total} replacement${total === 1 ? "" : "s"} (${describeReplacements(done)})`,
    );
  }
}

async function setHostname(
  tree: CopyTree,
  log: ChangeLog,
  oldName: string | null,
  newName: string,
): Promise<void> {
  const was = oldName === null ? "" : ` (was ${oldName})`;
  if (oldName !== newName) {
    await tree.writeText("/etc/hostname", `${newName}\n`);
    log.change(`set the host name in /etc/hostname to ${newName}${was}`);
  }
  // SUSE keeps it in /etc/HOSTNAME too; often a link to /etc/hostname, then it is done.
  const upper = await tree.resolve("/etc/HOSTNAME");
  if (upper !== null && upper !== (await tree.resolve("/etc/hostname"))) {
    const t = await tree.readText("/etc/HOSTNAME");
    if (t !== null && t.trim() !== newName) {
      await tree.writeText("/etc/HOSTNAME", `${newName}\n`);
      log.change(`set the host name in /etc/HOSTNAME to ${newName} (was ${t.trim()})`);
    }
  }
  // RHEL 6 and older: HOSTNAME= in /etc/sysconfig/network.
  const sys = await tree.readText("/etc/sysconfig/network");
  if (sys !== null && /^HOSTNAME=/m.test(sys)) {
    const next = sys.replace(/^HOSTNAME=.*$/m, `HOSTNAME=${newName}`);
    if (next !== sys) {
      await tree.writeText("/etc/sysconfig/network", next);
      log.change(`set HOSTNAME=${newName} in /etc/sysconfig/network`);
    }
  }
}
