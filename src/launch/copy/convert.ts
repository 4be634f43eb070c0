import { createHash } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import type { Clock } from "../../base/index.js";
import { type KernelReport, type ProfileName, normalizeModule, parseInitramfs } from "../inspect/index.js";
import { modulesListed } from "../inspect/initramfs.js";
import type { ChangeLog } from "./change-log.js";
import type { CopyMounts } from "./copy-mounts.js";
import type { CopyTree } from "./copy-tree.js";
import { runTool } from "./run-tool.js";

const GENERATE_TIMEOUT_MS = 15 * 60_000;
const MAX_INITRAMFS = 512 << 20;
const MAX_MODULE_FILES = 50_000;

export interface Converted {
  kernel: string;
  added: string[];
}

type Tool = { kind: "initramfs-tools"; path: string } | { kind: "dracut"; path: string };

interface Plan {
  kernel: KernelReport;
  /** Modules to add (every installed alternative of each unmet requirement). */
  add: string[];
  /** Unmet requirements with no module under /lib/modules either ("xen-blkfront", "virtio_blk or virtio_scsi"). */
  lacking: string[];
}

/**
 * Regenerates, in a chroot of the mounted copy and with the copy's own
 * update-initramfs or dracut, the initramfs of each kernel that lacks the
 * drivers of `profile` while its /lib/modules has them. The additions are
 * also written where the distribution keeps them (/etc/initramfs-tools/modules,
 * /etc/dracut.conf.d/), so a later kernel update on a recovered machine keeps
 * them. Each new initramfs is read back and checked.
 */
export async function convertInitramfs(
  mounts: CopyMounts,
  log: ChangeLog,
  kernels: KernelReport[],
  profile: ProfileName,
  env: { clock: Clock; signal: AbortSignal | undefined },
): Promise<Converted[]> {
  const tree = mounts.tree;
  const todo = kernels.filter((k) => !k.profiles[profile].ready);
  if (kernels.length === 0) {
    log.warn("conversion: inspect found no kernel in the copy's /boot; nothing to convert");
    return [];
  }
  if (todo.length === 0) {
    log.info(
      `conversion: every kernel's initramfs already has the drivers of profile ${profile}; nothing to do`,
    );
    return [];
  }
  const plans: Plan[] = [];
  for (const k of todo) {
    const p = await planKernel(tree, k, profile);
    if (p.lacking.length === 0) {
      plans.push(p);
      continue;
    }
    const what = `kernel ${k.version}${k.default ? " (the default)" : ""} lacks ${p.lacking.join(", ")} in its initramfs and under /lib/modules/${k.version}`;
    if (k.default)
      throw new LifeboatError(
        "LAUNCH_CONVERT_NO_MODULES",
        `cannot convert the copy for profile ${profile}: ${what}`,
        {
          hint: `install the kernel's extra modules package on the source server (for kernel ${k.version}: linux-modules-extra-${k.version} on Ubuntu, kernel-modules-extra on RHEL, kernel-default-extra on SUSE), let it replicate, and launch from a PIT taken after that; or launch with a profile whose drivers the kernel has`,
        },
      );
    log.warn(`conversion: ${what}; left as it is (it is not the kernel that boots)`);
  }
  if (plans.length === 0) return [];
  const tool = await findTool(tree);
  const modules = [...new Set(plans.flatMap((p) => p.add))];
  await persistModules(tree, log, tool, profile, modules);
  const out: Converted[] = [];
  try {
    for (const dir of ["/proc", "/sys", "/dev"]) await mounts.bind(dir);
    for (const p of plans) {
      env.signal?.throwIfAborted();
      await regenerate(mounts, log, tool, p, env);
      out.push({ kernel: p.kernel.version, added: p.add });
    }
  } finally {
    for (const dir of ["/dev", "/sys", "/proc"]) await mounts.unmountBelow(dir);
  }
  return out;
}

async function planKernel(tree: CopyTree, k: KernelReport, profile: ProfileName): Promise<Plan> {
  const installed = await installedModules(tree, k.version);
  const add: string[] = [];
  const lacking: string[] = [];
  // The report's verdict names each unmet requirement as "a or b".
  for (const req of k.profiles[profile].missing) {
    const anyOf = req.split(" or ");
    const have = anyOf.filter((m) => installed.has(normalizeModule(m)));
    if (have.length) add.push(...have);
    else lacking.push(req);
  }
  return { kernel: k, add, lacking };
}

/** Module names under /lib/modules/<version>: from modules.dep, else from the .ko files themselves. */
async function installedModules(tree: CopyTree, version: string): Promise<Set<string>> {
  for (const base of [`/lib/modules/${version}`, `/usr/lib/modules/${version}`]) {
    const dep = await tree.readText(`${base}/modules.dep`, 16 << 20);
    if (dep !== null) return new Set(modulesListed(dep));
  }
  const out = new Set<string>();
  const root = await tree.resolve(`/lib/modules/${version}`);
  if (root === null) return out;
  const entries = await fs.readdir(root, { recursive: true }).catch(() => [] as string[]);
  for (const e of entries.slice(0, MAX_MODULE_FILES)) {
    const m = /(?:^|\/)([^/]+)\.ko(?:\.(?:xz|zst|gz))?$/.exec(e);
    if (m) out.add(normalizeModule(m[1]!));
  }
  return out;
}

async function findTool(tree: CopyTree): Promise<Tool> {
  const first = async (paths: string[]) => {
    for (const p of paths) if ((await tree.stat(p))?.isFile()) return p;
    return null;
  };
  const uit = await first(["/usr/sbin/update-initramfs", "/sbin/update-initramfs"]);
  if (uit && (await tree.isDir("/etc/initramfs-tools"))) return { kind: "initramfs-tools", path: uit };
  const dracut = await first(["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/bin/dracut"]);
  if (dracut) return { kind: "dracut", path: dracut };
  throw new LifeboatError(
    "LAUNCH_CONVERT_NO_TOOL",
    "cannot convert the copy: it has neither dracut nor update-initramfs (initramfs-tools) to regenerate its initramfs with",
    {
      hint: "install the distribution's initramfs tool on the source server (dracut on RHEL and SUSE, initramfs-tools on Debian and Ubuntu), or add the drivers to its initramfs there and launch from a newer PIT",
    },
  );
}

/** Writes the added drivers where the distribution's tool reads them at every regeneration. */
async function persistModules(
  tree: CopyTree,
  log: ChangeLog,
  tool: Tool,
  profile: ProfileName,
  modules: string[],
): Promise<void> {
  if (tool.kind === "initramfs-tools") {
    const file = "/etc/initramfs-tools/modules";
    const text = (await tree.readText(file)) ?? "";
    const listed = new Set(
      text
        .split("\n")
        .map((l) => l.trim().split(/\s+/)[0] ?? "")
        .filter((l) => l && !l.startsWith("#"))
        .map(normalizeModule),
    );
    const missing = modules.filter((m) => !listed.has(normalizeModule(m)));
    if (/^\s*MODULES=dep\b/m.test((await tree.readText("/etc/initramfs-tools/initramfs.conf")) ?? ""))
      log.warn(
        "conversion: the copy's initramfs-tools uses MODULES=dep, which picks drivers for the machine it runs on (here the launch host); the added drivers are listed explicitly",
      );
    if (missing.length === 0) return;
    const sep = text === "" || text.endsWith("\n") ? "" : "\n";
    await tree.writeText(
      file,
      `${text}${sep}# Added by a Lifeboat launch for boot profile ${profile}\n${missing.join("\n")}\n`,
    );
    log.change(`added ${missing.join(", ")} to ${file}`);
  } else {
    const file = `/etc/dracut.conf.d/90-lifeboat-${profile}.conf`;
    if (!(await tree.isDir("/etc/dracut.conf.d"))) return;
    await tree.writeText(
      file,
      `# Added by a Lifeboat launch for boot profile ${profile}\nadd_drivers+=" ${modules.join(" ")} "\n`,
    );
    log.change(`wrote ${file} (add_drivers+=" ${modules.join(" ")} ")`);
  }
}

async function fileFacts(file: string): Promise<{ size: number; sha256: string } | null> {
  const st = await fs.stat(file).catch(() => null);
  if (!st?.isFile()) return null;
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return { size: st.size, sha256: h.digest("hex") };
}

const facts = (f: { size: number; sha256: string } | null) =>
  f === null ? "none" : `${f.size} bytes, sha256 ${f.sha256.slice(0, 16)}`;

async function regenerate(
  mounts: CopyMounts,
  log: ChangeLog,
  tool: Tool,
  p: Plan,
  { clock, signal }: { clock: Clock; signal: AbortSignal | undefined },
): Promise<void> {
  const tree = mounts.tree;
  const v = p.kernel.version;
  const name = p.kernel.initramfs
    ? path.basename(p.kernel.initramfs.path)
    : tool.kind === "initramfs-tools"
      ? `initrd.img-${v}`
      : `initramfs-${v}.img`;
  const inside = `/boot/${name}`;
  const hostFile = async () =>
    (await tree.resolve(inside)) ?? path.join((await tree.resolve("/boot")) ?? "/nonexistent", name);
  const before = await fileFacts(await hostFile());
  const args =
    tool.kind === "initramfs-tools"
      ? [tool.path, before ? "-u" : "-c", "-k", v]
      : // --no-hostonly: a host-only initramfs made here would hold the drivers of the launch host, not the target's.
        [tool.path, "--force", "--no-hostonly", "--add-drivers", p.add.join(" "), inside, v];
  log.info(`conversion: running ${args.join(" ")} in a chroot of the copy`);
  const started = clock.now();
  const r = await runTool("chroot", [tree.root, ...args], { timeoutMs: GENERATE_TIMEOUT_MS, signal });
  signal?.throwIfAborted();
  if (r.code !== 0)
    throw new LifeboatError(
      "LAUNCH_CONVERT_FAILED",
      `regenerating the initramfs of kernel ${v} in the copy failed (${r.timedOut ? "timed out" : `exit ${r.code}`}): ${r.tail.slice(-2000)}`,
      {
        hint: "read the tool's output above; /boot may be full, or the copy's initramfs configuration broken. Launch without --convert and fix the initramfs on the source server",
      },
    );
  const file = await hostFile();
  const after = await fileFacts(file);
  const data = after && after.size <= MAX_INITRAMFS ? await fs.readFile(file) : null;
  const info = data ? await parseInitramfs(data).catch(() => null) : null;
  const absent = p.add.filter((m) => !info?.modules.includes(normalizeModule(m)));
  if (info === null || absent.length)
    throw new LifeboatError(
      "LAUNCH_CONVERT_FAILED",
      `the regenerated initramfs of kernel ${v} (${inside}) ${info === null ? "cannot be read" : `still lacks ${absent.join(", ")}`}`,
      {
        hint: `the copy's ${tool.kind} did not include the drivers; check its configuration on the source server`,
      },
    );
  log.change(
    `regenerated ${inside} for kernel ${v} with ${tool.kind} in ${Math.round((clock.now() - started) / 1000)} s: ${facts(before)} → ${facts(after)}; added ${p.add.join(", ")}`,
  );
}
