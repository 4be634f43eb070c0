/**
 * A real Linux kernel for boot tests. The test machines have none in a file
 * (/boot is empty in containers), so the current Debian kernel package
 * (the one linux-image-amd64 depends on) is fetched with `apt-get download`
 * and the kernel and the modules a virtio disk with ext4 needs are extracted
 * from it, once: they are cached (under LIFEBOAT_TEST_CACHE, default
 * /var/cache/lifeboat-test, in boot-kernel/) so reruns start at once.
 *
 * The package has no modules.dep (depmod makes it when the package is
 * installed), so dependencies are read from each module's own `depends=`
 * field in its .modinfo section, which is what depmod reads too.
 */
import { execFile } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface BootKernel {
  version: string;
  vmlinuz: string;
  /** Module files to load, in an order that satisfies their dependencies. */
  modules: string[];
}

/**
 * Modules for a root filesystem on ext4 on a virtio-blk disk. crc32c_generic
 * is a soft dependency of ext4 and jbd2 (`softdep=pre: crypto-crc32c`): with
 * metadata checksums ext4 cannot mount without it.
 */
const WANTED = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];
/** What to extract from the package: enough to resolve WANTED and its dependencies. */
const EXTRACT = [
  "./boot/vmlinuz-*",
  "./lib/modules/*/kernel/drivers/virtio/*",
  "./lib/modules/*/kernel/drivers/block/*",
  "./lib/modules/*/kernel/fs/*",
  "./lib/modules/*/kernel/lib/*",
  "./lib/modules/*/kernel/crypto/*",
];

function cacheDir(): string {
  return (
    process.env.LIFEBOAT_TEST_CACHE ??
    (process.getuid?.() === 0 ? "/var/cache/lifeboat-test" : path.join(os.tmpdir(), "lifeboat-test-cache"))
  );
}

/** The kernel, or the reason it cannot be had (no apt, no network, no such package). */
export async function debianKernel(): Promise<BootKernel | string> {
  // A directory of its own: other tests keep other things under the same cache root.
  const cache = path.join(cacheDir(), "boot-kernel");
  await fs.mkdir(cache, { recursive: true });
  let pkg: string;
  try {
    const { stdout } = await run("apt-cache", ["depends", "linux-image-amd64"]);
    const m = /Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b/.exec(stdout);
    if (!m) return `apt-cache depends linux-image-amd64 names no kernel package:\n${stdout}`;
    pkg = m[1]!;
  } catch (err) {
    return `apt-cache cannot resolve linux-image-amd64 (not Debian, or no package lists): ${String(err)}`;
  }
  const dir = path.join(cache, pkg);
  const root = path.join(dir, "root");
  /** Written once the extraction is complete. */
  const marker = path.join(dir, "extracted");
  if (existsSync(marker)) return describe(root);
  try {
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    await run("apt-get", ["download", "-q", pkg], { cwd: dir, maxBuffer: 16 << 20 });
    const deb = (await fs.readdir(dir)).find((f) => f.endsWith(".deb"));
    if (!deb) return `apt-get download ${pkg} left no .deb`;
    await fs.mkdir(root);
    await run("sh", [
      "-c",
      'deb="$1"; root="$2"; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root" --wildcards "$@"',
      "sh",
      path.join(dir, deb),
      root,
      ...EXTRACT,
    ]);
    await fs.rm(path.join(dir, deb));
    const kernel = await describe(root);
    await fs.writeFile(marker, "");
    return kernel;
  } catch (err) {
    return `cannot fetch and extract ${pkg} (apt-get download, dpkg-deb): ${String(err)}`;
  }
}

async function describe(root: string): Promise<BootKernel> {
  const vmlinuz = (await fs.readdir(path.join(root, "boot"))).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error("the package holds no /boot/vmlinuz-*");
  const version = vmlinuz.slice("vmlinuz-".length);
  const byName = new Map<string, string>();
  for (const file of await walk(path.join(root, "lib/modules", version, "kernel")))
    if (/\.ko(\.xz)?$/.test(file)) byName.set(moduleName(file), file);
  const order: string[] = [];
  const visit = async (name: string, chain: string[]): Promise<void> => {
    const file = byName.get(name);
    if (!file)
      throw new Error(`module ${name} (needed by ${chain.join(" <- ") || "the boot"}) is not in the package`);
    if (order.includes(file)) return;
    for (const dep of await dependsOf(file)) await visit(dep, [name, ...chain]);
    order.push(file);
  };
  for (const name of WANTED) await visit(name, []);
  return { version, vmlinuz: path.join(root, "boot", vmlinuz), modules: order };
}

function moduleName(file: string): string {
  return path
    .basename(file)
    .replace(/\.ko(\.xz)?$/, "")
    .replace(/-/g, "_");
}

/** The `depends=a,b` field of a module's .modinfo section (NUL-separated key=value strings). */
async function dependsOf(file: string): Promise<string[]> {
  if (file.endsWith(".xz")) throw new Error(`${file}: compressed modules are not supported here`);
  const text = (await fs.readFile(file)).toString("latin1");
  const m = /(?:^|\0)depends=([^\0]*)\0/.exec(text);
  return m && m[1] ? m[1].split(",").map((d) => d.replace(/-/g, "_")) : [];
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

/** A statically linked busybox (busybox-static), or the reason there is none. */
export async function staticBusybox(): Promise<string> {
  for (const p of ["/bin/busybox", "/usr/bin/busybox"]) {
    try {
      const head = Buffer.alloc(4096);
      const fh = await fs.open(p, "r");
      await fh.read(head, 0, head.length, 0);
      await fh.close();
      // A dynamic executable names its loader (.interp) near the start of the file.
      if (!head.includes("ld-linux")) return p;
    } catch {
      // not there
    }
  }
  throw new Error("no statically linked busybox (apt-get install busybox-static)");
}
