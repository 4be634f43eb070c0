/**
 * prepareLaunchedCopy on real images: ext4 and xfs filesystems made by mkfs,
 * partitioned by sfdisk, inspected by inspectDisks, then prepared through
 * loop devices as the launch job does it. What the copy holds afterwards is
 * read back through a read-only mount of its own.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promises as fs, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { loadAgentConfig } from "../../src/agent/index.js";
import { ManualClock, isLifeboatError } from "../../src/base/index.js";
import { inspectDisks } from "../../src/launch/index.js";
import { type PrepareCopyOptions, prepareLaunchedCopy } from "../../src/launch/copy/index.js";
import { lifeboat } from "../support/cli.js";
import {
  BASE_TOOLS,
  DEBIAN_OS,
  grubFor,
  makeDisk,
  makeInitramfs,
  requires,
  writeRootTree,
} from "./fixtures.js";

const run = promisify(execFile);
const V = "6.1.0-18-amd64";
const ROOT = "3f1b2c4d-5e6f-4a1b-8c2d-0123456789ab";
const BOOT = "4a2b3c4d-5e6f-4a1b-8c2d-0123456789ab";
const DATA = "8e2b3c4d-5e6f-4a1b-8c2d-0123456789ab";
const XROOT = "5b3b3c4d-5e6f-4a1b-8c2d-0123456789ab";
const MiB = 1 << 20;
const SELINUX_LABEL = "system_u:object_r:net_conf_t:s0";

/** Mounts a filesystem of an image read-only for a look; undone by the returned function. */
async function peek(
  image: string,
  offset: number,
  size: number,
  type: string,
): Promise<{ dir: string; done(): Promise<void> }> {
  const loop = (
    await run("losetup", ["-f", "--show", "-r", "-o", String(offset), "--sizelimit", String(size), image])
  ).stdout.trim();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-peek-"));
  const opts = type === "xfs" ? "ro,nouuid,norecovery" : "ro";
  try {
    await run("mount", ["-t", type, "-o", opts, loop, dir]);
  } catch (err) {
    await run("losetup", ["-d", loop]);
    throw err;
  }
  return {
    dir,
    done: async () => {
      await run("umount", [dir]);
      await run("losetup", ["-d", loop]);
      await fs.rmdir(dir);
    },
  };
}

/** Nothing of a preparation is left: no mount under its directory, no loop device on the image, no directory. */
async function assertReleased(image: string, tmpDir: string): Promise<void> {
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter((l) => l.includes(tmpDir));
  assert.deepEqual(mounts, [], "mounts left behind");
  const loops = (await run("losetup", ["-j", image])).stdout.trim();
  assert.equal(loops, "", "loop devices left attached");
  assert.deepEqual(await fs.readdir(tmpDir), [], "temporary directories left behind");
}

/** An agent installation as `agent install` leaves it, plus a systemd unit enabled for it. */
async function writeAgent(root: string): Promise<void> {
  const d = path.join(root, "etc/lifeboat/agent");
  await fs.mkdir(path.join(d, "state"), { recursive: true, mode: 0o700 });
  const config = {
    version: 1,
    endpoint: "https://dr.corp.example:443",
    serverId: "srv-0001",
    serverName: "sap01",
    hostname: "sap01",
    disks: [{ index: 0, path: "/dev/sda", kind: "device", id: "wwn-0x5000" }],
  };
  await fs.writeFile(path.join(d, "config.json"), JSON.stringify(config), { mode: 0o600 });
  await fs.writeFile(
    path.join(d, "agent.key"),
    "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    { mode: 0o600 },
  );
  await fs.writeFile(
    path.join(d, "agent.pem"),
    "-----BEGIN CERTIFICATE-----\nc\n-----END CERTIFICATE-----\n",
  );
  await fs.writeFile(path.join(d, "ca.pem"), "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n");
  await fs.writeFile(path.join(d, "state/session.json"), '{"resumeToken":"r-123"}', { mode: 0o600 });
  await fs.writeFile(path.join(d, "state/disk-0.dirty"), "x");
  const sys = path.join(root, "etc/systemd/system");
  await fs.mkdir(path.join(sys, "multi-user.target.wants"), { recursive: true });
  await fs.writeFile(
    path.join(sys, "lifeboat-agent.service"),
    "[Service]\nExecStart=/usr/bin/lifeboat agent run --config-dir /etc/lifeboat/agent\n",
  );
  await fs.symlink(
    "/etc/systemd/system/lifeboat-agent.service",
    path.join(sys, "multi-user.target.wants/lifeboat-agent.service"),
  );
}

/** Network configuration in the forms the distributions keep it, each holding 10.0.0.1 and 10.0.0.12. */
async function writeNetwork(root: string, hostFile: string): Promise<void> {
  const etc = path.join(root, "etc");
  await fs.writeFile(path.join(etc, "hostname"), "sap01\n");
  await fs.writeFile(
    path.join(etc, "hosts"),
    "127.0.0.1 localhost\n10.0.0.1 sap01.corp.example sap01\n10.0.0.12 sap02\n",
  );
  await fs.mkdir(path.join(etc, "network/interfaces.d"), { recursive: true });
  await fs.writeFile(
    path.join(etc, "network/interfaces"),
    "auto eth0\niface eth0 inet static\n  address 10.0.0.1/24\n  gateway 10.0.0.12\n",
  );
  await fs.mkdir(path.join(etc, "netplan"));
  await fs.writeFile(
    path.join(etc, "netplan/50-static.yaml"),
    "network:\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24]\n      routes: [{to: default, via: 10.0.0.12}]\n",
    { mode: 0o600 },
  );
  await fs.mkdir(path.join(etc, "sysconfig/network-scripts"), { recursive: true });
  const ifcfg = path.join(etc, "sysconfig/network-scripts/ifcfg-eth0");
  await fs.writeFile(ifcfg, "IPADDR=10.0.0.1\nGATEWAY=10.0.0.12\n");
  // An SELinux label, as on RHEL: a rewritten file without it would be unreadable to the copy's network service.
  await run("setfattr", ["-n", "security.selinux", "-v", SELINUX_LABEL, ifcfg]);
  await fs.mkdir(path.join(etc, "NetworkManager/system-connections"), { recursive: true });
  await fs.writeFile(
    path.join(etc, "NetworkManager/system-connections/eth0.nmconnection"),
    "[ipv4]\naddress1=10.0.0.1/24,10.0.0.12\n",
    { mode: 0o600 },
  );
  await fs.mkdir(path.join(etc, "systemd/network"), { recursive: true });
  await fs.writeFile(path.join(etc, "systemd/network/10-eth0.network"), "[Network]\nAddress=10.0.0.12/24\n");
  // A link to a file of the launch host: it must be neither read nor written there.
  await fs.symlink(hostFile, path.join(etc, "network/interfaces.d/host-link"));
}

void describe(
  "prepareLaunchedCopy on loop-mounted ext4 and xfs",
  requires({ tools: [...BASE_TOOLS, "mkfs.xfs", "losetup", "mount", "setfattr", "getfattr"], root: true }),
  () => {
    let work = "";
    let disk = "";
    let xdisk = "";
    let datadisk = "";
    let hostFile = "";
    let mnt = "";
    const lines: string[] = [];
    const opts = (more: Partial<PrepareCopyOptions> = {}): PrepareCopyOptions => ({
      jobId: "job-42",
      jobType: "drill",
      log: (level, message) => lines.push(`${level}: ${message}`),
      clock: new ManualClock(Date.parse("2026-11-29T10:00:00Z")),
      tmpDir: mnt,
      ...more,
    });

    before(async () => {
      work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-copytest-"));
      mnt = path.join(work, "mnt");
      await fs.mkdir(mnt);
      hostFile = path.join(work, "host-interfaces");
      await fs.writeFile(hostFile, "address 10.0.0.1\n");
      // ext4 root on partition 1, /boot (ext4) on partition 2.
      const root = path.join(work, "root");
      const boot = path.join(work, "boot");
      await writeRootTree(root, {
        osRelease: DEBIAN_OS,
        fstab: `UUID=${ROOT} / ext4 defaults 0 1\nUUID=${BOOT} /boot ext4 defaults 0 2\nUUID=${DATA} /srv/data ext4 defaults 0 2\n`,
        kernels: [
          {
            version: V,
            dep: [
              "kernel/drivers/block/virtio_blk.ko",
              "kernel/drivers/net/virtio_net.ko",
              "kernel/drivers/block/xen-blkfront.ko",
              "kernel/drivers/net/xen-netfront.ko",
            ],
          },
        ],
      });
      await writeAgent(root);
      await writeNetwork(root, hostFile);
      await fs.mkdir(path.join(root, "srv/data"), { recursive: true });
      // /boot's contents live on partition 2; the root keeps the empty mount point.
      await fs.rename(path.join(root, "boot"), boot);
      await fs.mkdir(path.join(root, "boot"));
      const ird = await makeInitramfs(work, {
        version: V,
        modules: ["virtio_blk.ko", "virtio_net.ko"],
        compression: "gzip",
      });
      await fs.writeFile(path.join(boot, `initrd.img-${V}`), ird);
      await fs.mkdir(path.join(boot, "grub"));
      await fs.writeFile(path.join(boot, "grub/grub.cfg"), grubFor(V, ROOT).replaceAll("/boot/", "/"));
      disk = path.join(work, "disk.img");
      await makeDisk(disk, "gpt", [
        { sizeMiB: 32, type: "linux", fs: "ext4", uuid: ROOT, dir: root },
        { sizeMiB: 16, type: "linux", fs: "ext4", uuid: BOOT, dir: boot },
        { sizeMiB: 8, type: "linux", fs: "ext4", uuid: DATA },
      ]);

      // xfs root, unpartitioned, /boot on it.
      const xroot = path.join(work, "xroot");
      await writeRootTree(xroot, {
        osRelease: DEBIAN_OS,
        fstab: `UUID=${XROOT} / xfs defaults 0 0\n`,
        kernels: [{ version: V, initramfs: ird, dep: ["kernel/drivers/block/virtio_blk.ko"] }],
        grub: grubFor(V, XROOT),
      });
      await writeAgent(xroot);
      await fs.writeFile(path.join(xroot, "etc/hostname"), "sap01\n");
      xdisk = path.join(work, "xdisk.img");
      await makeDisk(xdisk, "none", [{ sizeMiB: 64, type: "linux", fs: "xfs", uuid: XROOT, dir: xroot }]);

      const data = path.join(work, "data");
      await fs.mkdir(path.join(data, "sapdata"), { recursive: true });
      datadisk = path.join(work, "data.img");
      await makeDisk(datadisk, "none", [{ sizeMiB: 16, type: "linux", fs: "ext4", dir: data }]);
    });
    after(async () => {
      await fs.rm(work, { recursive: true, force: true });
    });

    void it("replaces the agent identity with the marker, disables the unit, renames the host and maps addresses", async () => {
      const report = await inspectDisks([disk], { profile: "kvm" });
      assert.equal(report.ready, true, JSON.stringify(report.problems));
      lines.length = 0;
      const r = await prepareLaunchedCopy(
        [disk],
        report,
        opts({
          hostname: "sap01-drill",
          addresses: [{ from: "10.0.0.1", to: "192.168.50.1" }],
        }),
      );
      await assertReleased(disk, mnt);
      const A = "/etc/lifeboat/agent";
      for (const want of [
        `removed ${A}/agent.key (agent private key)`,
        `removed ${A}/agent.pem (agent client certificate)`,
        `removed ${A}/state/session.json (wire resume token)`,
        `removed ${A}/state/disk-0.dirty (the protected server's unshipped writes)`,
        "disabled lifeboat-agent.service: removed /etc/systemd/system/multi-user.target.wants/lifeboat-agent.service",
        "set the host name in /etc/hostname to sap01-drill (was sap01)",
        "mapped /etc/hosts: 3 replacements (sap01 → sap01-drill ×2, 10.0.0.1 → 192.168.50.1)",
        "mapped /etc/network/interfaces: 1 replacement (10.0.0.1 → 192.168.50.1)",
        "mapped /etc/netplan/50-static.yaml: 1 replacement (10.0.0.1 → 192.168.50.1)",
        "mapped /etc/sysconfig/network-scripts/ifcfg-eth0: 1 replacement (10.0.0.1 → 192.168.50.1)",
        "mapped /etc/NetworkManager/system-connections/eth0.nmconnection: 1 replacement (10.0.0.1 → 192.168.50.1)",
      ])
        assert.ok(r.changes.includes(want), `missing change ${want} in\n${r.changes.join("\n")}`);
      assert.ok(
        r.changes.some((c) =>
          c.startsWith(
            `replaced ${A}/config.json with a launched-copy marker (copy of sap01, drill job job-42)`,
          ),
        ),
      );
      // 10.0.0.12 only: nothing to change there.
      assert.ok(!r.changes.some((c) => c.includes("systemd/network")), r.changes.join("\n"));
      for (const c of r.changes) assert.ok(lines.includes(`info: ${c}`), `not logged: ${c}`);
      assert.ok(
        lines.includes("info: mounted the copy's /boot (ext4 on disk 0 partition 2) read-write"),
        lines.join("\n"),
      );
      assert.ok(!lines.some((l) => l.includes("/srv/data")), "a data filesystem was mounted");
      assert.deepEqual(r.converted, []);
      assert.equal(
        await fs.readFile(hostFile, "utf8"),
        "address 10.0.0.1\n",
        "a file of the launch host was changed",
      );

      const p = report.disks[0]!.partitions[0]!;
      const m = await peek(disk, p.start, p.size, "ext4");
      try {
        const read = (f: string) => fs.readFile(path.join(m.dir, f), "utf8");
        const ls = await fs.readdir(path.join(m.dir, A));
        assert.deepEqual(ls.sort(), ["ca.pem", "config.json", "state"]);
        assert.deepEqual(await fs.readdir(path.join(m.dir, A, "state")), []);
        const marker = JSON.parse(await read(`${A}/config.json`)) as { launchedCopy: Record<string, string> };
        assert.deepEqual(marker.launchedCopy, {
          server: "sap01",
          serverId: "srv-0001",
          jobId: "job-42",
          jobType: "drill",
          at: "2026-11-29T10:00:00.000Z",
        });
        assert.equal((await fs.stat(path.join(m.dir, A, "config.json"))).mode & 0o777, 0o600);
        await assert.rejects(
          fs.lstat(path.join(m.dir, "etc/systemd/system/multi-user.target.wants/lifeboat-agent.service")),
        );
        assert.equal(await read("etc/hostname"), "sap01-drill\n");
        assert.equal(
          await read("etc/hosts"),
          "127.0.0.1 localhost\n192.168.50.1 sap01-drill.corp.example sap01-drill\n10.0.0.12 sap02\n",
        );
        assert.equal(
          await read("etc/network/interfaces"),
          "auto eth0\niface eth0 inet static\n  address 192.168.50.1/24\n  gateway 10.0.0.12\n",
        );
        const ifcfg = path.join(m.dir, "etc/sysconfig/network-scripts/ifcfg-eth0");
        assert.equal(await fs.readFile(ifcfg, "utf8"), "IPADDR=192.168.50.1\nGATEWAY=10.0.0.12\n");
        const label = await run("getfattr", ["--only-values", "-n", "security.selinux", ifcfg]);
        assert.equal(label.stdout.replace(/\0$/, ""), SELINUX_LABEL, "SELinux label kept");
        assert.equal(await read("etc/systemd/network/10-eth0.network"), "[Network]\nAddress=10.0.0.12/24\n");
        const nm = path.join(m.dir, "etc/NetworkManager/system-connections/eth0.nmconnection");
        assert.equal(await fs.readFile(nm, "utf8"), "[ipv4]\naddress1=192.168.50.1/24,10.0.0.12\n");
        assert.equal((await fs.stat(nm)).mode & 0o777, 0o600, "mode kept");
        assert.equal((await fs.stat(path.join(m.dir, "etc/netplan/50-static.yaml"))).mode & 0o777, 0o600);
        assert.equal(await fs.readlink(path.join(m.dir, "etc/network/interfaces.d/host-link")), hostFile);
        const left = (await fs.readdir(path.join(m.dir, "etc"))).filter((n) => n.includes(".lifeboat-"));
        assert.deepEqual(left, [], "temporary files left in /etc");

        // The agent refuses to run with the marker: the config loader and `agent run`.
        const dir = path.join(work, "agent-dir");
        await fs.cp(path.join(m.dir, A), dir, { recursive: true });
        await assert.rejects(loadAgentConfig(dir), (err) => {
          assert.ok(isLifeboatError(err, "AGENT_LAUNCHED_COPY"), String(err));
          assert.match(err.message, /launched copy of sap01 \(drill job job-42/);
          assert.match(err.hint, /install the agent afresh with a new token/);
          return true;
        });
        const cli = await lifeboat(["agent", "run", "--config-dir", dir, "--json"]);
        assert.equal(cli.code, 1, cli.stderr);
        const e = JSON.parse(cli.stderr.trim().split("\n").pop()!) as { code: string; hint: string };
        assert.equal(e.code, "AGENT_LAUNCHED_COPY");
        assert.match(e.hint, /new token/);
      } finally {
        await m.done();
      }
    });

    void it("conversion: modules on disk but no initramfs tool in the copy is LAUNCH_CONVERT_NO_TOOL", async () => {
      const report = await inspectDisks([disk], { profile: "xen" });
      assert.deepEqual(report.disks[0]!.kernels[0]!.profiles.xen.missing, ["xen-blkfront", "xen-netfront"]);
      await assert.rejects(prepareLaunchedCopy([disk], report, opts({ convert: "xen" })), (err) => {
        assert.ok(isLifeboatError(err, "LAUNCH_CONVERT_NO_TOOL"), String(err));
        return true;
      });
      await assertReleased(disk, mnt);
    });

    void it("conversion: drivers missing under /lib/modules too is LAUNCH_CONVERT_NO_MODULES, naming kernel and modules", async () => {
      const report = await inspectDisks([disk], { profile: "vmware" });
      await assert.rejects(prepareLaunchedCopy([disk], report, opts({ convert: "vmware" })), (err) => {
        assert.ok(isLifeboatError(err, "LAUNCH_CONVERT_NO_MODULES"), String(err));
        assert.match(err.message, new RegExp(`kernel ${V} \\(the default\\).*vmw_pvscsi, vmxnet3`));
        assert.match(err.hint, /extra modules package on the source server/);
        return true;
      });
      await assertReleased(disk, mnt);
    });

    void it("prepares an xfs root (mounted with nouuid)", async () => {
      const report = await inspectDisks([xdisk], { profile: "kvm" });
      assert.equal(report.disks[0]!.filesystems[0]!.root, true);
      const r = await prepareLaunchedCopy(
        [xdisk],
        report,
        opts({ hostname: "sap01-drill", jobType: "recovery" }),
      );
      await assertReleased(xdisk, mnt);
      assert.ok(
        r.changes.includes("removed /etc/lifeboat/agent/agent.key (agent private key)"),
        r.changes.join("\n"),
      );
      const m = await peek(xdisk, 0, 64 * MiB, "xfs");
      try {
        assert.equal(await fs.readFile(path.join(m.dir, "etc/hostname"), "utf8"), "sap01-drill\n");
        await assert.rejects(fs.stat(path.join(m.dir, "etc/lifeboat/agent/agent.key")));
        const marker = JSON.parse(
          await fs.readFile(path.join(m.dir, "etc/lifeboat/agent/config.json"), "utf8"),
        ) as {
          launchedCopy: { jobType: string };
        };
        assert.equal(marker.launchedCopy.jobType, "recovery");
      } finally {
        await m.done();
      }
    });

    void it("a disk with no installed system: a warning, no change, no error", async () => {
      const report = await inspectDisks([datadisk], { profile: "kvm" });
      lines.length = 0;
      const r = await prepareLaunchedCopy([datadisk], report, opts({ hostname: "x-drill" }));
      assert.deepEqual(r, { changes: [], converted: [] });
      assert.ok(
        lines.some((l) => l.startsWith("warn: no installed system")),
        lines.join("\n"),
      );
    });

    void it("a damaged filesystem fails the preparation and leaves no mount or loop device behind", async () => {
      const bad = path.join(work, "bad.img");
      await fs.copyFile(disk, bad);
      const report = await inspectDisks([bad], { profile: "kvm" });
      // The root mounts; /boot (partition 2) has its superblock wiped after inspect.
      const p2 = report.disks[0]!.partitions[1]!;
      const fh = await fs.open(bad, "r+");
      await fh.write(Buffer.alloc(4096), 0, 4096, p2.start);
      await fh.close();
      await assert.rejects(prepareLaunchedCopy([bad], report, opts()), (err) => {
        assert.ok(isLifeboatError(err, "LAUNCH_COPY_MOUNT_FAILED"), String(err));
        assert.match(err.message, /disk 0 partition 2/);
        return true;
      });
      await assertReleased(bad, mnt);
    });

    void it("not root: LAUNCH_COPY_NEEDS_ROOT with a hint, before anything is attached", async (t) => {
      const here = path.dirname(new URL(import.meta.url).pathname);
      for (let d = here; d !== "/"; d = path.dirname(d))
        if (((await fs.stat(d)).mode & 0o005) !== 0o005)
          return t.skip(`${d} is not readable by other users, so the code cannot run as nobody`);
      const report = await inspectDisks([disk], { profile: "kvm" });
      const mod = new URL("../../src/launch/copy/index.js", import.meta.url).href;
      const script = `
        const { prepareLaunchedCopy } = await import(${JSON.stringify(mod)});
        try {
          await prepareLaunchedCopy(${JSON.stringify([disk])}, ${JSON.stringify(report)}, { jobId: "j", jobType: "drill", log: () => {} });
          console.log(JSON.stringify({ code: "none" }));
        } catch (e) {
          console.log(JSON.stringify({ code: e.code, hint: e.hint }));
        }`;
      // As nobody: the test itself runs as root.
      const r = await run(process.execPath, ["--input-type=module", "-e", script], {
        uid: 65534,
        gid: 65534,
      });
      const out = JSON.parse(r.stdout) as { code: string; hint: string };
      assert.equal(out.code, "LAUNCH_COPY_NEEDS_ROOT");
      assert.match(out.hint, /as root/);
      await assertReleased(disk, mnt);
    });

    void it("an abort mid-way unmounts and detaches everything", async () => {
      const report = await inspectDisks([disk], { profile: "kvm" });
      const ac = new AbortController();
      const o = opts({ signal: ac.signal });
      o.log = (_level, message) => {
        if (message.startsWith("mounted the copy's /boot")) ac.abort();
      };
      await assert.rejects(
        prepareLaunchedCopy([disk], report, o),
        (err) => (err as Error).name === "AbortError",
      );
      await assertReleased(disk, mnt);
    });
  },
);
