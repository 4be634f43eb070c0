import { execFile, spawn } from "node:child_process";
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { LifeboatError } from "../base/index.js";
import { verifyDetached } from "../net/index.js";
import { RELEASE_PEM } from "./build.js";
import { MANIFEST, MANIFEST_SIG, hashFile, readManifest } from "./manifest.js";
import { SEA_FILE } from "./sea.js";
import { failbackInit, udhcpcScript } from "./failback-init.js";

const execFileP = promisify(execFile);

/**
 * The failback boot environment: an initramfs that, booted with the
 * original server's own kernel (a boot loader entry or kexec), runs the
 * agent of the signed bundle in receive mode only (`agent run
 * --failback-only`), so a failback can write the server's boot disk, which
 * the system running from it never could. It holds busybox (the shell, the
 * module loader, udhcpc), the single executable with its native addons and
 * workers and the shared libraries it links, the kernel modules for disks
 * and network, and the original server's agent identity, so the image file
 * is a secret (written 0600). /init (failback-init.ts) says
 * `lifeboat-failback: ready` on the console when the failback is ready, then
 * reboots or powers off.
 */

/** Where the agent's files go in the image. */
export const IMAGE_AGENT_DIR = "/opt/lifeboat";
export const IMAGE_CONFIG_DIR = "/etc/lifeboat/agent";
/** The server's config.json as given, before the image's endpoint and disk names replaced its own. */
const SERVER_CONFIG = "/etc/lifeboat/server-config.json";
/** Drivers for the disks and network cards of virtual machines and common servers; missing ones are skipped. */
export const DEFAULT_IMAGE_MODULES = [
  "virtio_pci",
  "virtio_blk",
  "virtio_scsi",
  "virtio_net",
  "sd_mod",
  "ahci",
  "nvme",
  "e1000",
  "e1000e",
  // the filesystems /init mounts to put the original agent directory back
  // (crc32c: a soft dependency of both, which modinfo's depends= does not name)
  "crc32c_generic",
  "ext4",
  "xfs",
] as const;
/** Where `agent install` puts the agent directory (the agent's DEFAULT_AGENT_CONFIG_DIR). */
export const SERVER_AGENT_DIR = "/etc/lifeboat/agent";

export interface FailbackImageOptions {
  /** The image file to write (0600). */
  out: string;
  /** The signed agent bundle holding the single executable (D/downloads/agent). */
  bundleDir: string;
  /** The original server's agent configuration directory (config.json, agent.key, agent.pem, ca.pem). */
  agentConfigDir: string;
  /** Replaces the endpoint of the copied config.json (the site as the boot environment reaches it). */
  endpoint?: string;
  /** Replaces disk paths of the copied config.json: the names the disks have in the boot environment. */
  disks?: { index: number; path: string }[];
  /** The kernel the image boots with (default: the running one, `uname -r`). */
  kernelVersion?: string;
  /** The root under which lib/modules/VERSION is (default "/"). */
  modulesRoot?: string;
  /** More modules to load (by name), after the default ones. */
  modules?: string[];
  /** A statically linked busybox (default /bin/busybox, then /usr/bin/busybox). */
  busybox?: string;
  /** After the failback: reboot (default) or power off. */
  then?: "reboot" | "poweroff";
  compression?: "gzip" | "zstd";
  /**
   * The agent directory's path on the server (default SERVER_AGENT_DIR):
   * after a ready failback /init puts the original one back there. null: leave the disks as verified.
   */
  restoreIdentity?: string | null;
}

export interface FailbackImage {
  file: string;
  bytes: number;
  serverName: string;
  endpoint: string;
  kernelVersion: string;
  /** Module files in load order, and wanted modules neither found nor built in. */
  modules: string[];
  missingModules: string[];
  libraries: string[];
}

interface CopiedConfig {
  endpoint: string;
  serverName: string;
  disks: { index: number; path: string; kind: string }[];
}

/** Builds the failback boot environment (see the module comment). */
export async function buildFailbackImage(opts: FailbackImageOptions): Promise<FailbackImage> {
  const out = path.resolve(opts.out);
  await mkdir(path.dirname(out), { recursive: true });
  const stage = await mkdtemp(path.join(path.dirname(out), `.${path.basename(out)}-`));
  const root = path.join(stage, "root");
  try {
    await chmod(stage, 0o700);
    for (const d of ["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib/modules/load", "opt"])
      await mkdir(path.join(root, d), { recursive: true });
    const caPem = await readFile(path.join(opts.agentConfigDir, "ca.pem"), "utf8").catch((err: unknown) => {
      throw imageError(`${opts.agentConfigDir} holds no agent configuration (ca.pem): ${String(err)}`, err);
    });
    const agentFiles = await copyBundle(opts.bundleDir, path.join(root, IMAGE_AGENT_DIR.slice(1)), caPem);
    const config = await copyAgentConfig(opts, path.join(root, IMAGE_CONFIG_DIR.slice(1)));
    // The server's own config.json, unchanged, for the agent directory /init puts back.
    await copyFile(path.join(opts.agentConfigDir, "config.json"), path.join(root, SERVER_CONFIG.slice(1)));
    await chmod(path.join(root, SERVER_CONFIG.slice(1)), 0o600);
    const libraries = await copyLibraries(
      agentFiles.filter((f) => f.endsWith(SEA_FILE) || f.endsWith(".node")),
      root,
    );
    const busybox = opts.busybox ?? (await staticBusybox());
    await copyFile(busybox, path.join(root, "bin", "busybox"));
    await chmod(path.join(root, "bin", "busybox"), 0o755);
    await symlink("busybox", path.join(root, "bin", "sh"));
    const kernelVersion = opts.kernelVersion ?? os.release();
    const mods = await copyModules(
      path.join(opts.modulesRoot ?? "/", "lib", "modules", kernelVersion),
      [...DEFAULT_IMAGE_MODULES, ...(opts.modules ?? [])],
      path.join(root, "lib", "modules", "load"),
    );
    await writeFile(path.join(root, "etc", "hosts"), "127.0.0.1 localhost\n::1 localhost\n");
    await writeFile(path.join(root, "etc", "nsswitch.conf"), "hosts: files dns\n");
    await writeFile(path.join(root, "etc", "passwd"), "root:x:0:0:root:/:/bin/sh\n");
    await writeFile(path.join(root, "etc", "group"), "root:x:0:\n");
    await writeFile(path.join(root, "etc", "udhcpc.script"), udhcpcScript(), { mode: 0o755 });
    await writeFile(
      path.join(root, "init"),
      failbackInit({
        then: opts.then ?? "reboot",
        agent: path.join(IMAGE_AGENT_DIR, SEA_FILE),
        configDir: IMAGE_CONFIG_DIR,
        disks: config.disks.map((d) => d.path),
        serverName: config.serverName,
        ...(opts.restoreIdentity === null
          ? {}
          : { restoreIdentity: { dir: opts.restoreIdentity ?? SERVER_AGENT_DIR, config: SERVER_CONFIG } }),
      }),
      { mode: 0o755 },
    );
    const tmp = path.join(stage, "image");
    await pack(root, tmp, opts.compression ?? "gzip");
    await chmod(tmp, 0o600);
    await rename(tmp, out);
    return {
      file: out,
      bytes: (await stat(out)).size,
      serverName: config.serverName,
      endpoint: config.endpoint,
      kernelVersion,
      modules: mods.loaded,
      missingModules: mods.missing,
      libraries,
    };
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
}

function imageError(message: string, cause?: unknown, hint?: string): LifeboatError {
  return new LifeboatError("FAILBACK_IMAGE_FAILED", message, {
    hint:
      hint ??
      "give the original server's agent directory (--agent-config), a bundle built with its single executable, and the modules of the server's kernel",
    ...(cause !== undefined ? { cause } : {}),
  });
}

/**
 * Copies the single executable, its native addons, workers and package.json
 * from the bundle, after checking the manifest's signature against the
 * agent's own CA and each file's SHA-256 against the manifest.
 */
async function copyBundle(bundleDir: string, to: string, caPem: string): Promise<string[]> {
  const manifest = await readManifest(bundleDir).catch((err: unknown) => {
    throw imageError(
      `${bundleDir} is not an agent bundle: ${String(err)}`,
      err,
      "build it: `lifeboat bundle build`",
    );
  });
  const [text, sig, releasePem] = await Promise.all([
    readFile(path.join(bundleDir, MANIFEST)),
    readFile(path.join(bundleDir, MANIFEST_SIG)),
    readFile(path.join(bundleDir, RELEASE_PEM), "utf8"),
  ]);
  let signed = false;
  try {
    signed = verifyDetached(releasePem, caPem, text, sig.toString("base64"));
  } catch {
    signed = false;
  }
  if (!signed)
    throw new LifeboatError(
      "FAILBACK_IMAGE_UNSIGNED",
      `the bundle in ${bundleDir} is not signed by the CA the agent trusts`,
      { hint: "build the bundle on the site the server replicates to (`lifeboat bundle build`)" },
    );
  if (!manifest.files.some((f) => f.name === SEA_FILE))
    throw imageError(
      `the bundle in ${bundleDir} has no single executable (${SEA_FILE})`,
      undefined,
      "build it with the single executable: `lifeboat bundle build` without --no-sea",
    );
  await mkdir(to, { recursive: true });
  const copied: string[] = [];
  for (const f of manifest.files) {
    if (![SEA_FILE, "package.json"].includes(f.name) && !/\.(node|js)$/.test(f.name)) continue;
    const from = path.join(bundleDir, f.name);
    const h = await hashFile(from);
    if (h.sha256 !== f.sha256)
      throw new LifeboatError("FAILBACK_IMAGE_UNSIGNED", `${from} does not match the signed manifest`, {
        hint: "rebuild the bundle (`lifeboat bundle build`)",
      });
    await copyFile(from, path.join(to, f.name));
    if (f.name === SEA_FILE) await chmod(path.join(to, f.name), 0o755);
    copied.push(path.join(to, f.name));
  }
  return copied;
}

/** Copies the agent's identity, with the endpoint and disk paths replaced as asked. */
async function copyAgentConfig(opts: FailbackImageOptions, to: string): Promise<CopiedConfig> {
  const from = opts.agentConfigDir;
  let config: Record<string, unknown> & CopiedConfig;
  try {
    config = JSON.parse(await readFile(path.join(from, "config.json"), "utf8")) as typeof config;
  } catch (err) {
    throw imageError(`cannot read ${path.join(from, "config.json")}: ${String(err)}`, err);
  }
  if (
    typeof config.endpoint !== "string" ||
    typeof config.serverId !== "string" ||
    !Array.isArray(config.disks)
  )
    throw imageError(
      `${path.join(from, "config.json")} is not an agent configuration (a launched copy's marker?)`,
      undefined,
      "give the original server's agent directory, /etc/lifeboat/agent on the server (or a copy of it)",
    );
  if (opts.endpoint !== undefined) {
    if (!/^https:\/\/[^/]+/.test(opts.endpoint))
      throw new LifeboatError("USAGE", `--endpoint ${opts.endpoint} is not https://host:port`, {
        hint: "the site's address as the boot environment reaches it, e.g. https://10.0.0.5:8443",
        exitCode: 2,
      });
    config.endpoint = opts.endpoint.replace(/\/+$/, "");
  }
  for (const d of opts.disks ?? []) {
    const disk = config.disks.find((x) => x.index === d.index);
    if (!disk)
      throw new LifeboatError(
        "USAGE",
        `the agent has no disk ${d.index} (its disks: ${config.disks.map((x) => x.index).join(", ")})`,
        { hint: "give --disk INDEX=PATH with an index of the agent's configuration", exitCode: 2 },
      );
    disk.path = d.path;
    disk.kind = "device";
  }
  await mkdir(to, { recursive: true, mode: 0o700 });
  await chmod(to, 0o700);
  await writeFile(path.join(to, "config.json"), `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  for (const [name, mode] of [
    ["agent.key", 0o600],
    ["agent.pem", 0o644],
    ["ca.pem", 0o644],
  ] as const) {
    await copyFile(path.join(from, name), path.join(to, name)).catch((err: unknown) => {
      throw imageError(`cannot copy ${path.join(from, name)}: ${String(err)}`, err);
    });
    await chmod(path.join(to, name), mode);
  }
  return config;
}

/** The shared libraries `ldd` names for these files (and the dynamic loader), copied to the same paths. */
async function copyLibraries(files: string[], root: string): Promise<string[]> {
  const libs = new Set<string>();
  for (const f of files) {
    let text: string;
    try {
      text = (await execFileP("ldd", [f])).stdout;
    } catch (err) {
      const out = `${(err as { stdout?: string }).stdout ?? ""}`;
      if (/not a dynamic executable|statically linked/.test(out)) continue;
      throw imageError(`ldd ${f} failed: ${String(err)}`, err, "install ldd (libc-bin)");
    }
    for (const line of text.split("\n")) {
      if (/not found/.test(line))
        throw imageError(`${path.basename(f)} needs a library this host lacks: ${line.trim()}`);
      const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
      if (m) libs.add(m[1]!);
    }
  }
  for (const lib of libs) {
    await mkdir(path.join(root, path.dirname(lib)), { recursive: true });
    await copyFile(lib, path.join(root, lib));
  }
  return [...libs].sort();
}

/**
 * Copies the wanted modules and everything they depend on (each module's own
 * `depends=` in its .modinfo section, what depmod reads), uncompressed
 * (busybox insmod loads plain .ko files), named NN-name.ko in load order.
 * Modules built into the kernel (modules.builtin) need nothing; a wanted
 * module that is neither is reported and skipped.
 */
async function copyModules(
  dir: string,
  wanted: string[],
  to: string,
): Promise<{ loaded: string[]; missing: string[] }> {
  let files: string[];
  try {
    files = await walk(path.join(dir, "kernel"));
  } catch (err) {
    throw imageError(
      `no kernel modules in ${dir}: ${String(err)}`,
      err,
      "give the kernel the image boots with (--kernel-version) and where its modules are (--modules-root)",
    );
  }
  const byName = new Map<string, string>();
  for (const f of files) if (/\.ko(\.xz|\.zst|\.gz)?$/.test(f)) byName.set(moduleName(f), f);
  const builtin = new Set(
    (await readFile(path.join(dir, "modules.builtin"), "utf8").catch(() => ""))
      .split("\n")
      .filter(Boolean)
      .map(moduleName),
  );
  const order: string[] = [];
  const content = new Map<string, Buffer>();
  const missing: string[] = [];
  const visit = async (name: string, top: boolean): Promise<void> => {
    if (order.includes(name) || builtin.has(name)) return;
    const file = byName.get(name);
    if (!file) {
      if (top) missing.push(name);
      else throw imageError(`module ${name}, a dependency, is not in ${dir}`);
      return;
    }
    const data = await moduleBytes(file);
    content.set(name, data);
    const m = /(?:^|\0)depends=([^\0]*)\0/.exec(data.toString("latin1"));
    for (const dep of m?.[1] ? m[1].split(",").map((d) => d.replace(/-/g, "_")) : []) await visit(dep, false);
    if (!order.includes(name)) order.push(name);
  };
  for (const name of wanted) await visit(name.replace(/-/g, "_"), true);
  const loaded: string[] = [];
  for (const [i, name] of order.entries()) {
    const file = `${String(i).padStart(3, "0")}-${name}.ko`;
    await writeFile(path.join(to, file), content.get(name)!);
    loaded.push(file);
  }
  return { loaded, missing };
}

function moduleName(file: string): string {
  return path
    .basename(file)
    .replace(/\.ko(\.xz|\.zst|\.gz)?$/, "")
    .replace(/-/g, "_");
}

async function moduleBytes(file: string): Promise<Buffer> {
  const tool = file.endsWith(".xz")
    ? "xz"
    : file.endsWith(".zst")
      ? "zstd"
      : file.endsWith(".gz")
        ? "gzip"
        : "";
  if (!tool) return readFile(file);
  try {
    return (await execFileP(tool, ["-dc", file], { encoding: "buffer", maxBuffer: 256 << 20 })).stdout;
  } catch (err) {
    throw imageError(`cannot decompress ${file} with ${tool}: ${String(err)}`, err, `install ${tool}`);
  }
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

/** A statically linked busybox: a dynamic one would need its libraries in the image too. */
async function staticBusybox(): Promise<string> {
  for (const p of ["/bin/busybox", "/usr/bin/busybox"]) {
    const head = await readFile(p).catch(() => undefined);
    if (head && !head.subarray(0, 8192).includes("ld-linux")) return p;
  }
  throw imageError(
    "no statically linked busybox (/bin/busybox)",
    undefined,
    "install it (Debian: apt-get install busybox-static) or give --busybox FILE",
  );
}

/** The root as a newc cpio archive owned by root, compressed. */
async function pack(root: string, file: string, compression: "gzip" | "zstd"): Promise<void> {
  const compress = compression === "zstd" ? "zstd -q -10 -T0 -c" : "gzip -6 -c";
  await new Promise<void>((resolve, reject) => {
    const child = spawn(
      "sh",
      [
        "-c",
        `set -e; cd "$1"; find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | ${compress} > "$2"`,
        "sh",
        root,
        file,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0
        ? resolve()
        : reject(
            imageError(
              `packing the image failed (cpio, ${compression}): ${err.trim().slice(-500)}`,
              undefined,
              `install cpio and ${compression}`,
            ),
          ),
    );
  });
}
