import {
  DEFAULT_AGENT_CONFIG_DIR,
  type LaunchedCopyMarker,
  launchedCopyMarkerText,
} from "../../agent/config.js";
import type { ChangeLog } from "./change-log.js";
import type { CopyTree } from "./copy-tree.js";

const UNIT_DIRS = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];
const UNIT = /^lifeboat.*\.service$/;

export interface CopyIdentity {
  jobId: string;
  jobType: "drill" | "recovery";
  at: Date;
  /** The protected server, when the caller knows it; else what the copy's agent configuration says. */
  server?: { name: string; id?: string | undefined } | undefined;
}

/**
 * Takes the protected server's agent identity out of a launched copy, so a
 * booted copy can never connect as that server: removes the private key, the
 * certificate and the run-time state (the wire resume token among it),
 * replaces config.json with the launched-copy marker the agent refuses to run
 * with, and disables the agent's service. ca.pem stays: it is public.
 */
export async function removeAgentIdentity(tree: CopyTree, log: ChangeLog, id: CopyIdentity): Promise<void> {
  const dirs = await agentDirs(tree);
  let found = false;
  for (const dir of dirs) {
    if (!(await tree.isDir(dir))) continue;
    found = true;
    const config = parseLoose(await tree.readText(`${dir}/config.json`));
    for (const [name, what] of [
      ["agent.key", "agent private key"],
      ["agent.pem", "agent client certificate"],
      ["state/session.json", "wire resume token"],
      ["state/status.json", "the protected server's replication status"],
    ] as const)
      // Overwritten first: a deleted key must not stay readable in the copy's free blocks.
      if (await tree.remove(`${dir}/${name}`, { overwrite: true }))
        log.change(`removed ${dir}/${name} (${what})`);
    for (const n of (await tree.list(`${dir}/state`)) ?? [])
      if (/^disk-\d+\.dirty$/.test(n) && (await tree.remove(`${dir}/state/${n}`)))
        log.change(`removed ${dir}/state/${n} (the protected server's unshipped writes)`);
    const marker: LaunchedCopyMarker = {
      server: id.server?.name ?? config.server ?? "an unknown server",
      ...((id.server?.id ?? config.serverId) ? { serverId: id.server?.id ?? config.serverId } : {}),
      jobId: id.jobId,
      jobType: id.jobType,
      at: id.at.toISOString(),
    };
    await tree.writeText(`${dir}/config.json`, launchedCopyMarkerText(marker), 0o600);
    log.change(
      `replaced ${dir}/config.json with a launched-copy marker (copy of ${marker.server}, ${id.jobType} job ${id.jobId}): the agent refuses to run with it`,
    );
  }
  if (!found)
    log.info(`the copy has no agent configuration (${dirs.join(", ")}): no agent identity to remove`);
  await disableUnits(tree, log);
}

/** The default configuration directory and any other that a lifeboat unit passes with --config-dir. */
async function agentDirs(tree: CopyTree): Promise<string[]> {
  const dirs = new Set([DEFAULT_AGENT_CONFIG_DIR]);
  for (const d of UNIT_DIRS)
    for (const n of (await tree.list(d)) ?? []) {
      if (!UNIT.test(n)) continue;
      const text = (await tree.readText(`${d}/${n}`, 64 << 10)) ?? "";
      for (const m of text.matchAll(/--config-dir[= ]+("?)(\/[^\s"]+)\1/g))
        dirs.add(m[2]!.replace(/\/+$/, ""));
    }
  return [...dirs];
}

function parseLoose(text: string | null): { server?: string; serverId?: string } {
  try {
    const raw = JSON.parse(text ?? "null") as Record<string, unknown> | null;
    const c = (raw?.launchedCopy ?? raw) as Record<string, unknown> | null;
    const str = (v: unknown) => (typeof v === "string" && v ? v : undefined);
    const server = str(c?.serverName) ?? str(c?.server);
    const serverId = str(c?.serverId);
    return { ...(server ? { server } : {}), ...(serverId ? { serverId } : {}) };
  } catch {
    return {};
  }
}

/** Removes the enablement links of lifeboat units (systemd *.wants/*.requires, SysV rc?.d). */
async function disableUnits(tree: CopyTree, log: ChangeLog): Promise<void> {
  for (const n of (await tree.list("/etc/systemd/system")) ?? []) {
    if (!/\.(?:wants|requires)$/.test(n)) continue;
    const dir = `/etc/systemd/system/${n}`;
    for (const u of (await tree.list(dir)) ?? [])
      if (UNIT.test(u) && (await tree.remove(`${dir}/${u}`)))
        log.change(`disabled ${u}: removed ${dir}/${u}`);
  }
  for (const n of (await tree.list("/etc")) ?? []) {
    if (!/^rc[0-6S]\.d$/.test(n)) continue;
    for (const u of (await tree.list(`/etc/${n}`)) ?? [])
      if (/^[SK]\d\dlifeboat/.test(u) && (await tree.remove(`/etc/${n}/${u}`)))
        log.change(`disabled ${u}: removed /etc/${n}/${u}`);
  }
}
