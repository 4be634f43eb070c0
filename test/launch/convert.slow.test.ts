/**
 * Conversion on a real Debian: debootstrap a minimal bookworm with its kernel
 * and initramfs-tools, build its initramfs with MODULES=list and no Xen
 * drivers, put it on an ext4 image (/boot on a partition of its own), and
 * check that inspect says "not ready" for profile xen, that the launch's
 * conversion regenerates the initramfs with the copy's own update-initramfs,
 * and that inspect then says "ready".
 *
 * The configured tree is cached as a tarball under /var/cache/lifeboat-test,
 * so only the first run pays for debootstrap (a few minutes; it needs
 * deb.debian.org); later runs take well under a minute.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, promises as fs, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { inspectDisks } from "../../src/launch/index.js";
import { prepareLaunchedCopy } from "../../src/launch/copy/index.js";
import { BASE_TOOLS, makeDisk, requires } from "./fixtures.js";

const run = promisify(execFile);
const CACHE_DIR = "/var/cache/lifeboat-test";
/** Bump the suffix when the recipe below changes. */
const TARBALL = path.join(CACHE_DIR, "debian-bookworm-minbase-kernel-modules-list-v1.tar.zst");
const MIRROR = "http://deb.debian.org/debian";
const ROOT = "6c4d2e1f-0a1b-4c2d-8e3f-4a5b6c7d8e9f";
const BOOT = "7d5e3f2a-1b2c-4d3e-8f4a-5b6c7d8e9fa0";

const sh = (script: string, ...args: string[]) =>
  run("sh", ["-c", script, "sh", ...args], { maxBuffer: 64 << 20, timeout: 30 * 60_000 });

/** Runs `cmd` in a chroot of `root` with /proc, /sys and /dev bound in, unbinding them whatever happens. */
async function inChroot(root: string, cmd: string[]): Promise<void> {
  const bound: string[] = [];
  try {
    for (const d of ["/proc", "/sys", "/dev"]) {
      await run("mount", ["--bind", d, path.join(root, d)]);
      bound.unshift(path.join(root, d));
    }
    await run("chroot", [root, ...cmd], {
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      maxBuffer: 64 << 20,
    });
  } finally {
    for (const m of bound) await run("umount", [m]);
  }
}

/**
 * The cached tree: debootstrap, documentation and package caches dropped,
 * initramfs-tools set to MODULES=list with no module listed, the initramfs
 * rebuilt that way (so it lacks the Xen drivers its kernel ships).
 */
async function ensureTarball(diag: (m: string) => void): Promise<void> {
  if (existsSync(TARBALL)) return;
  await fs.mkdir(CACHE_DIR, { recursive: true });
  // Built outside the cache directory, which other test suites share; only the finished tarball goes there.
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-debootstrap-"));
  const started = Date.now();
  try {
    const root = path.join(tmp, "root");
    await run(
      "debootstrap",
      ["--variant=minbase", "--include=linux-image-amd64,initramfs-tools", "bookworm", root, MIRROR],
      { maxBuffer: 64 << 20, timeout: 30 * 60_000 },
    ).catch(async (err: Error) => {
      const log = await fs.readFile(path.join(root, "debootstrap/debootstrap.log"), "utf8").catch(() => "");
      throw new Error(`${err.message}\ndebootstrap.log ends:\n${log.slice(-4000)}`);
    });
    diag(`debootstrap took ${Math.round((Date.now() - started) / 1000)} s`);
    await sh(
      'cd "$1" && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/doc usr/share/man usr/share/locale',
      root,
    );
    const conf = path.join(root, "etc/initramfs-tools/initramfs.conf");
    await fs.writeFile(conf, (await fs.readFile(conf, "utf8")).replace(/^MODULES=.*$/m, "MODULES=list"));
    await fs.writeFile(path.join(root, "etc/initramfs-tools/modules"), "# no modules listed\n");
    const [version] = await fs.readdir(path.join(root, "lib/modules"));
    await inChroot(root, ["update-initramfs", "-u", "-k", version!]);
    await sh('tar -C "$1" --numeric-owner -cf - . | zstd -q -3 -T0 -o "$2"', root, `${tmp}/tree.tar.zst`);
    const partial = `${TARBALL}.partial-${process.pid}`;
    await fs.copyFile(`${tmp}/tree.tar.zst`, partial);
    await fs.rename(partial, TARBALL);
    diag(`built ${TARBALL} in ${Math.round((Date.now() - started) / 1000)} s`);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

void describe(
  "conversion of a real Debian bookworm for profile xen",
  requires({ tools: [...BASE_TOOLS, "debootstrap", "chroot", "losetup", "mount"], root: true }),
  () => {
    let work = "";
    let disk = "";
    let mnt = "";
    let version = "";
    /** Timings of the set-up, reported by the test. */
    const notes: string[] = [];
    const diag = (m: string) => notes.push(m);

    before(async () => {
      const started = Date.now();
      await ensureTarball(diag);
      work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-convert-"));
      mnt = path.join(work, "mnt");
      await fs.mkdir(mnt);
      const root = path.join(work, "root");
      const boot = path.join(work, "boot");
      await fs.mkdir(root);
      await sh('zstd -q -dc "$1" | tar -C "$2" --numeric-owner -xf -', TARBALL, root);
      version = (await fs.readdir(path.join(root, "lib/modules")))[0]!;
      // /boot on a partition of its own: the root keeps the empty mount point.
      await fs.rename(path.join(root, "boot"), boot);
      await fs.mkdir(path.join(root, "boot"));
      await fs.writeFile(
        path.join(root, "etc/fstab"),
        `UUID=${ROOT} / ext4 errors=remount-ro 0 1\nUUID=${BOOT} /boot ext4 defaults 0 2\n`,
      );
      await fs.writeFile(path.join(root, "etc/hostname"), "deb01\n");
      await fs.mkdir(path.join(boot, "grub"), { recursive: true });
      await fs.writeFile(
        path.join(boot, "grub/grub.cfg"),
        `menuentry 'Debian' {\n\tlinux /vmlinuz-${version} root=UUID=${ROOT} ro\n\tinitrd /initrd.img-${version}\n}\n`,
      );
      const used = Number((await sh('du -sm "$1" | cut -f1', root)).stdout.trim());
      disk = path.join(work, "disk.img");
      await makeDisk(disk, "gpt", [
        { sizeMiB: Math.ceil(used * 1.4) + 64, type: "linux", fs: "ext4", uuid: ROOT, dir: root },
        { sizeMiB: 128, type: "linux", fs: "ext4", uuid: BOOT, dir: boot },
      ]);
      await fs.rm(root, { recursive: true, force: true });
      await fs.rm(boot, { recursive: true, force: true });
      diag(`image of ${used} MiB ready in ${Math.round((Date.now() - started) / 1000)} s`);
    });
    after(async () => {
      if (work) await fs.rm(work, { recursive: true, force: true });
    });

    void it("inspect: not ready for xen; conversion adds the drivers; inspect: ready", async (t) => {
      for (const n of notes) t.diagnostic(n);
      const before = await inspectDisks([disk], { profile: "xen" });
      const k = before.disks[0]!.kernels.find((x) => x.version === version)!;
      assert.equal(before.ready, false);
      assert.deepEqual(k.profiles.xen.missing, ["xen-blkfront", "xen-netfront"]);
      assert.ok(
        before.problems.some((p) => p.code === "LAUNCH_DRIVERS_MISSING"),
        JSON.stringify(before.problems),
      );

      const lines: string[] = [];
      const started = Date.now();
      const r = await prepareLaunchedCopy([disk], before, {
        jobId: "job-convert",
        jobType: "drill",
        hostname: "deb01-drill",
        convert: "xen",
        tmpDir: mnt,
        log: (level, message) => lines.push(`${level}: ${message}`),
      });
      t.diagnostic(`prepare with conversion took ${Math.round((Date.now() - started) / 1000)} s`);
      for (const l of lines) t.diagnostic(l);
      assert.deepEqual(r.converted, [{ kernel: version, added: ["xen-blkfront", "xen-netfront"] }]);
      assert.ok(
        r.changes.includes("added xen-blkfront, xen-netfront to /etc/initramfs-tools/modules"),
        r.changes.join("\n"),
      );
      assert.ok(
        r.changes.some(
          (c) =>
            c.startsWith(
              `regenerated /boot/initrd.img-${version} for kernel ${version} with initramfs-tools`,
            ) && c.includes("→"),
        ),
        r.changes.join("\n"),
      );
      const leftovers = readFileSync("/proc/self/mountinfo", "utf8")
        .split("\n")
        .filter((l) => l.includes(mnt));
      assert.deepEqual(leftovers, [], "mounts left behind");
      assert.equal((await run("losetup", ["-j", disk])).stdout.trim(), "", "loop devices left attached");

      const after = await inspectDisks([disk], { profile: "xen" });
      assert.equal(after.ready, true, JSON.stringify(after.problems, null, 1));
      const k2 = after.disks[0]!.kernels.find((x) => x.version === version)!;
      assert.deepEqual(k2.profiles.xen.found, { "xen-blkfront": "initramfs", "xen-netfront": "initramfs" });
    });
  },
);
