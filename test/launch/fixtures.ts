/**
 * Builders of real disk images for the launch tests: cpio archives made by
 * the cpio tool (newc) and compressed by the real compressors, filesystems
 * made by mkfs, partition tables written by sfdisk.
 */
import { execFile, spawnSync } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Test options that skip with a reason when a capability is missing. Under
 * LIFEBOAT_TEST_STRICT=1 (CI) a missing capability is a failure instead.
 */
export function requires(needs: { tools?: string[]; root?: boolean }): { skip?: string } {
  const missing = (needs.tools ?? []).filter((t) => !onPath(t));
  const reasons = [
    ...(missing.length ? [`missing tools: ${missing.join(", ")}`] : []),
    ...(needs.root && process.getuid?.() !== 0 ? ["needs root (loop devices and mount)"] : []),
  ];
  if (reasons.length === 0) return {};
  if (process.env.LIFEBOAT_TEST_STRICT === "1")
    throw new Error(`LIFEBOAT_TEST_STRICT=1 and this test ${reasons.join("; ")}`);
  return { skip: reasons.join("; ") };
}

function onPath(tool: string): boolean {
  return spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool]).status === 0;
}

export const BASE_TOOLS = ["cpio", "sfdisk", "mkfs.ext4", "debugfs", "gzip", "zstd", "xz", "lz4"];

export type Packing = "none" | "gzip" | "zstd" | "xz" | "lz4" | "lz4-legacy";

export interface InitramfsSpec {
  version: string;
  /** Module file names (virtio_blk.ko, xen-blkfront.ko.xz, ...), placed under lib/modules/VERSION/kernel/drivers/. */
  modules: string[];
  compression: Packing;
  /** An uncompressed early archive (microcode) in front, as dracut and initramfs-tools make it. */
  early?: boolean;
  /** Lines of a modules.builtin inside the initramfs. */
  builtinInside?: string[];
}

/** An initramfs as distributions build them: cpio -H newc, then the compressor. */
export async function makeInitramfs(work: string, spec: InitramfsSpec): Promise<Buffer> {
  const dir = await fs.mkdtemp(path.join(work, "ird-"));
  const mods = path.join(dir, "usr/lib/modules", spec.version, "kernel/drivers/misc");
  await fs.mkdir(mods, { recursive: true });
  await fs.mkdir(path.join(dir, "bin"));
  await fs.writeFile(path.join(dir, "init"), "#!/bin/sh\nexec /sbin/init\n", { mode: 0o755 });
  for (const m of spec.modules) await fs.writeFile(path.join(mods, m), `module ${m}\n`.repeat(50));
  if (spec.builtinInside)
    await fs.writeFile(
      path.join(dir, "usr/lib/modules", spec.version, "modules.builtin"),
      spec.builtinInside.join("\n") + "\n",
    );
  const main = await packDir(dir, spec.compression);
  if (!spec.early) return main;
  const early = await fs.mkdtemp(path.join(work, "early-"));
  await fs.mkdir(path.join(early, "kernel/x86/microcode"), { recursive: true });
  await fs.writeFile(path.join(early, "kernel/x86/microcode/GenuineIntel.bin"), Buffer.alloc(3000, 7));
  return Buffer.concat([await packDir(early, "none"), main]);
}

async function packDir(dir: string, compression: Packing): Promise<Buffer> {
  const compressor: Record<Packing, string> = {
    none: "cat",
    gzip: "gzip -9 -n",
    zstd: "zstd -q -19 -c",
    xz: "xz --check=crc32 -c",
    lz4: "lz4 -q -c",
    "lz4-legacy": "lz4 -q -l -c",
  };
  const { stdout } = await run(
    "sh",
    [
      "-c",
      `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | ${compressor[compression]}`,
      "sh",
      dir,
    ],
    { encoding: "buffer", maxBuffer: 64 << 20 },
  );
  return stdout;
}

export interface RootSpec {
  /** os-release text; null for none. */
  osRelease?: string | null;
  /** /etc/os-release as a link to ../usr/lib/os-release, as systemd distributions have it. */
  osReleaseLink?: boolean;
  fstab?: string | null;
  kernels?: {
    version: string;
    initramfs?: Buffer;
    initramfsName?: string;
    builtin?: string[];
    dep?: string[];
  }[];
  /** grub.cfg text; null for none. */
  grub?: string | null;
  grubPath?: string;
}

export const DEBIAN_OS =
  'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n';

export function grubFor(version: string, rootUuid: string): string {
  return [
    "set default=0",
    "search --no-floppy --fs-uuid --set=root " + rootUuid,
    `menuentry 'Linux ${version}' {`,
    `\tlinux /boot/vmlinuz-${version} root=UUID=${rootUuid} ro quiet`,
    `\tinitrd /boot/initrd.img-${version}`,
    "}",
    "",
  ].join("\n");
}

/** Writes a root filesystem tree: /etc, /boot with kernels and initramfs, /lib/modules. */
export async function writeRootTree(dir: string, spec: RootSpec): Promise<void> {
  await fs.mkdir(path.join(dir, "etc"), { recursive: true });
  await fs.mkdir(path.join(dir, "boot"), { recursive: true });
  await fs.mkdir(path.join(dir, "usr/lib"), { recursive: true });
  // Merged /usr: /lib is a link to usr/lib, as on current distributions.
  await fs.symlink("usr/lib", path.join(dir, "lib"));
  if (spec.osRelease != null) {
    if (spec.osReleaseLink) {
      await fs.writeFile(path.join(dir, "usr/lib/os-release"), spec.osRelease);
      await fs.symlink("../usr/lib/os-release", path.join(dir, "etc/os-release"));
    } else await fs.writeFile(path.join(dir, "etc/os-release"), spec.osRelease);
  }
  if (spec.fstab != null) await fs.writeFile(path.join(dir, "etc/fstab"), spec.fstab);
  for (const k of spec.kernels ?? []) {
    await fs.writeFile(path.join(dir, "boot", `vmlinuz-${k.version}`), Buffer.alloc(4096, 0x4b));
    await fs.writeFile(path.join(dir, "boot", `config-${k.version}`), "CONFIG_X=y\n");
    if (k.initramfs)
      await fs.writeFile(path.join(dir, "boot", k.initramfsName ?? `initrd.img-${k.version}`), k.initramfs);
    const mdir = path.join(dir, "usr/lib/modules", k.version);
    await fs.mkdir(mdir, { recursive: true });
    if (k.builtin) await fs.writeFile(path.join(mdir, "modules.builtin"), k.builtin.join("\n") + "\n");
    if (k.dep)
      await fs.writeFile(path.join(mdir, "modules.dep"), k.dep.map((d) => `${d}:`).join("\n") + "\n");
  }
  if (spec.grub != null) {
    const p = path.join(dir, spec.grubPath ?? "boot/grub/grub.cfg");
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, spec.grub);
  }
}

export interface PartSpec {
  sizeMiB: number;
  type: "linux" | "esp" | "swap";
  fs?: "ext4" | "xfs" | "vfat" | "swap";
  uuid?: string;
  label?: string;
  /** Tree to copy into the filesystem. */
  dir?: string;
  /** GPT unique partition GUID (PARTUUID=); random when absent. */
  partUuid?: string;
}

const SFDISK_TYPE = { linux: "L", esp: "U", swap: "S" } as const;

/**
 * A disk image: a partition table (gpt, mbr, or none: then exactly one
 * partition spec, the filesystem on the whole disk) with filesystems made by
 * mkfs. ext4, vfat and swap need no privileges; xfs is made on a loop device
 * and filled through a mount, which needs root.
 */
export async function makeDisk(
  file: string,
  table: "gpt" | "mbr" | "none",
  parts: PartSpec[],
): Promise<void> {
  const MiB = 1 << 20;
  const total = table === "none" ? parts[0]!.sizeMiB : 2 + parts.reduce((n, p) => n + p.sizeMiB, 0);
  await fs.writeFile(file, "");
  await fs.truncate(file, total * MiB);
  const placed: { start: number; size: number; p: PartSpec }[] = [];
  if (table === "none") placed.push({ start: 0, size: total * MiB, p: parts[0]! });
  else {
    let start = MiB;
    const lines = [`label: ${table === "gpt" ? "gpt" : "dos"}`];
    for (const p of parts) {
      const uuid = p.partUuid ? `, uuid=${p.partUuid}` : "";
      lines.push(`start=${start / 512}, size=${(p.sizeMiB * MiB) / 512}, type=${SFDISK_TYPE[p.type]}${uuid}`);
      placed.push({ start, size: p.sizeMiB * MiB, p });
      start += p.sizeMiB * MiB;
    }
    await runInput("sfdisk", ["-q", file], lines.join("\n") + "\n");
  }
  for (const { start, size, p } of placed) if (p.fs) await makeFs(file, start, size, p);
}

async function makeFs(file: string, start: number, size: number, p: PartSpec): Promise<void> {
  if (p.fs === "ext4") {
    const args = [
      "-q",
      "-F",
      "-E",
      `offset=${start}`,
      ...(p.uuid ? ["-U", p.uuid] : []),
      ...(p.label ? ["-L", p.label] : []),
    ];
    await run("mkfs.ext4", [...args, ...(p.dir ? ["-d", p.dir] : []), file, `${size / 1024}k`]);
    return;
  }
  if (p.fs === "swap") {
    const tmp = `${file}.swap`;
    await fs.writeFile(tmp, Buffer.alloc(size));
    await run("mkswap", [...(p.uuid ? ["-U", p.uuid] : []), ...(p.label ? ["-L", p.label] : []), tmp]);
    const fh = await fs.open(file, "r+");
    await fh.write(
      await fs.readFile(tmp, { encoding: null }).then((b) => b.subarray(0, 8192)),
      0,
      8192,
      start,
    );
    await fh.close();
    await fs.rm(tmp);
    return;
  }
  if (p.fs === "vfat") {
    // FAT is made and filled at its offset in the image by mkfs.vfat and mtools: no loop device.
    const id = p.uuid ? ["-i", p.uuid.replace("-", "")] : [];
    const label = p.label ? ["-n", p.label] : [];
    await run("mkfs.vfat", [...id, ...label, `--offset=${start / 512}`, file, String(size / 1024)]);
    const env = { ...process.env, MTOOLSRC: "/dev/null", MTOOLS_SKIP_CHECK: "1" };
    for (const name of p.dir ? await fs.readdir(p.dir) : [])
      await run("mcopy", ["-s", "-i", `${file}@@${start}`, path.join(p.dir!, name), "::/"], { env });
    return;
  }
  // xfs: made on a loop device limited to the partition, filled through a mount.
  const { stdout } = await run("losetup", [
    "-f",
    "--show",
    "-o",
    String(start),
    "--sizelimit",
    String(size),
    file,
  ]);
  const loop = stdout.trim();
  try {
    const id = p.uuid ? ["-m", `uuid=${p.uuid}`] : [];
    const label = p.label ? ["-L", p.label] : [];
    // fstests' override of the 300 MB minimum, so test images stay small.
    const env = { ...process.env, TEST_DIR: "1", TEST_DEV: "1", QA_CHECK_FS: "1" };
    await run("mkfs.xfs", ["-q", "-f", ...id, ...label, loop], { env });
    if (p.dir) {
      const mnt = await fs.mkdtemp(`${file}.mnt-`);
      await run("mount", [loop, mnt]);
      try {
        await run("cp", ["-r", "--no-preserve=ownership", `${p.dir}/.`, mnt]);
      } finally {
        await run("umount", [mnt]);
        await fs.rmdir(mnt);
      }
    }
  } finally {
    await run("losetup", ["-d", loop]);
  }
}

function runInput(cmd: string, args: string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, (err) => (err ? reject(new Error(err.message)) : resolve()));
    child.stdin!.end(input);
  });
}
