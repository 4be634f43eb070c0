/**
 * The failback boot environment (src/bundle/failback-image.ts) boots under
 * QEMU (TCG, no KVM needed) with the original server's disk attached and
 * receives a failback into it. A site protects a small server (an ext4 loop
 * device), recovers it onto another loop device, the recovered instance gets
 * new files and its own agent; then, with the original's agent not running
 * on the host, the image made from the original's agent directory boots a
 * Debian kernel with the original's disk image as a virtio disk and
 * user-mode networking, reaching the site at 10.0.2.2 (which the site's
 * certificate names). After the cut-over the console says
 * `lifeboat-failback: ready`, /init puts the original server's agent
 * directory back on the disk, and the disk holds the cut-over PIT's files
 * with the original's identity (the site verified it block for block
 * against the PIT first).
 *
 * The kernel is Debian's (test/support/boot-kernel.ts); its network modules
 * (virtio_net and what it needs) are extracted here from the same package,
 * cached beside it. Slow: minutes under TCG.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { AgentService } from "../../src/agent/service.js";
import { createLogger } from "../../src/base/index.js";
import { buildFailbackImage } from "../../src/bundle/index.js";
import { debianKernel, staticBusybox } from "../support/boot-kernel.js";
import { missingCapabilities, strictCapabilities } from "../support/capabilities.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { type LoopDisk, createLoopDisk, unmountForTest } from "../support/loop-disk.js";
import { exportPit, until } from "../support/pit-check.js";
import { type JobView, installTestAgent, takePit, waitForJob } from "../support/site-actions.js";
import { buildSiteBundle } from "./helpers.js";
import { testNodeCache } from "./node-cache.js";

const run = promisify(execFile);
const MiB = 1 << 20;
const DISK_MIB = 32;
const log = (name: string) => createLogger(process.env.LIFEBOAT_TEST_LOG ?? "silent", name);
/** The agent directory's place on a server's root filesystem (relative). */
const AGENT_DIR = "etc/lifeboat/agent";

async function fileHash(file: string): Promise<string> {
  return createHash("sha256")
    .update(await fs.readFile(file))
    .digest("hex");
}

/** An agent's identity files, copied where a server keeps them. */
async function copyAgentDir(from: string, to: string): Promise<void> {
  await fs.mkdir(to, { recursive: true, mode: 0o700 });
  for (const f of ["config.json", "agent.key", "agent.pem", "ca.pem"])
    await fs.copyFile(path.join(from, f), path.join(to, f));
  await fs.chmod(path.join(to, "agent.key"), 0o600);
}

async function mountImage(image: string, dir: string): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  await run("mount", ["-o", "ro,loop", image, dir]);
  return dir;
}

interface FailbackView {
  id: string;
  jobId: string;
  state: string;
  completedPass: number;
  bytesSent: number;
  cutoverPitId: string | null;
  verify: { chunks: number; mismatched: number } | null;
  error: { code: string; message: string } | null;
}

function cacheRoot(): string {
  return (
    process.env.LIFEBOAT_TEST_CACHE ??
    (process.getuid?.() === 0 ? "/var/cache/lifeboat-test" : path.join(os.tmpdir(), "lifeboat-test-cache"))
  );
}

/**
 * lib/modules/VERSION of the Debian kernel package, with the modules the
 * boot environment loads for a virtio disk, a virtio network card and ext4:
 * extracted once (apt-get download, dpkg-deb) and cached.
 */
async function kernelModules(version: string): Promise<string> {
  const dir = path.join(cacheRoot(), "failback-image-modules-2", version);
  const root = path.join(dir, "root");
  if (existsSync(path.join(dir, "extracted"))) return root;
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(root, { recursive: true });
  const pkg = `linux-image-${version}`;
  await run("apt-get", ["download", "-q", pkg], { cwd: dir, maxBuffer: 16 << 20 });
  const deb = (await fs.readdir(dir)).find((f) => f.endsWith(".deb"));
  if (!deb) throw new Error(`apt-get download ${pkg} left no .deb`);
  await run("sh", [
    "-c",
    'deb="$1"; root="$2"; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$root" --wildcards "$@"',
    "sh",
    path.join(dir, deb),
    root,
    "./lib/modules/*/modules.builtin",
    "./lib/modules/*/kernel/drivers/virtio/*",
    "./lib/modules/*/kernel/drivers/block/virtio_blk.ko",
    "./lib/modules/*/kernel/drivers/net/virtio_net.ko",
    "./lib/modules/*/kernel/drivers/net/net_failover.ko",
    "./lib/modules/*/kernel/net/core/failover.ko",
    "./lib/modules/*/kernel/fs/ext4/ext4.ko",
    "./lib/modules/*/kernel/fs/jbd2/jbd2.ko",
    "./lib/modules/*/kernel/fs/mbcache.ko",
    "./lib/modules/*/kernel/lib/crc16.ko",
    "./lib/modules/*/kernel/crypto/crc32c_generic.ko",
  ]);
  await fs.rm(path.join(dir, deb));
  await fs.writeFile(path.join(dir, "extracted"), "");
  return root;
}

/** The guest's kernel and module tree, or why there is none. */
async function guestKernel(): Promise<{ vmlinuz: string; version: string; modulesRoot: string } | string> {
  const missing = missingCapabilities("qemu", "root", "loop", "fsfreeze");
  if (missing) return missing;
  try {
    await staticBusybox();
  } catch (err) {
    return (err as Error).message;
  }
  const k = await debianKernel();
  if (typeof k === "string") return k;
  try {
    return { vmlinuz: k.vmlinuz, version: k.version, modulesRoot: await kernelModules(k.version) };
  } catch (err) {
    return `cannot extract the network modules of ${k.version}: ${String(err)}`;
  }
}

void describe("failback boot environment", { timeout: 1_800_000 }, () => {
  let tmp = "";
  let site: Site;
  let orig: LoopDisk | undefined;
  let rec: LoopDisk | undefined;
  let qemu: ChildProcess | undefined;
  const services: AgentService[] = [];
  let guest: Awaited<ReturnType<typeof guestKernel>> = "not prepared";

  async function startAgent(configDir: string, name: string): Promise<AgentService> {
    const svc = await AgentService.start({ configDir, logger: log(name), settingsIntervalMs: 1000 });
    services.push(svc);
    return svc;
  }

  before(async () => {
    guest = await guestKernel();
    if (typeof guest === "string") return;
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-fbimage-"));
    // The guest reaches the site through QEMU's user-mode network, at 10.0.2.2.
    site = await startSite(tmp, { hostnames: ["localhost", "127.0.0.1", "10.0.2.2"] });
  });

  after(async () => {
    if (qemu && qemu.exitCode === null) qemu.kill("SIGKILL");
    for (const s of services) await s.stop().catch(() => undefined);
    if (tmp) await unmountForTest(path.join(tmp, "rec-mnt"));
    await site?.close();
    await orig?.cleanup();
    await rec?.cleanup();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  void it("boots under QEMU with the original disk attached and receives a failback into it", async (t) => {
    if (typeof guest === "string") {
      if (strictCapabilities) throw new Error(`LIFEBOAT_TEST_STRICT=1 and no guest: ${guest}`);
      return t.skip(guest);
    }
    const began = Date.now();
    const since = () => `${((Date.now() - began) / 1000).toFixed(0)} s`;
    const built = await buildSiteBundle(site.dataDir, { cacheDir: testNodeCache() });
    assert.equal(built.sea, true);
    t.diagnostic(`bundle with its single executable built at ${since()}`);

    // The original server: protected, then lost.
    orig = await createLoopDisk({ sizeMiB: DISK_MIB });
    spawnSync("sh", ["-c", `head -c ${8 * MiB} /dev/urandom > ${orig.mountPoint}/base && sync`]);
    await fs.writeFile(path.join(orig.mountPoint!, "before.txt"), "written before the disaster\n");
    const o = await installTestAgent(site, { dir: tmp, name: "orig", device: orig.device });
    // As on a real boot disk, the agent directory lives on it (what the failback overwrites, then restores).
    await copyAgentDir(o.configDir, path.join(orig.mountPoint!, AGENT_DIR));
    const origService = await startAgent(o.configDir, "orig");
    await takePit(site, o.serverName);
    await origService.stop();

    // The recovery, onto another disk; the recovered instance takes orders and gets its own agent.
    rec = await createLoopDisk({ sizeMiB: DISK_MIB, ext4: false });
    const { job } = await site.api<{ job: JobView }>("/api/v1/launches", {
      method: "POST",
      body: {
        servers: [o.serverName],
        mode: "recovery",
        target: "block",
        devices: [rec.device],
        pit: "latest",
      },
    });
    const recovered = await waitForJob(site, job.id, 180_000);
    assert.equal(recovered.state, "succeeded", JSON.stringify(recovered.result));
    const mnt = path.join(tmp, "rec-mnt");
    await fs.mkdir(mnt, { recursive: true });
    await run("mount", [rec.device, mnt]);
    spawnSync("sh", ["-c", `head -c ${2 * MiB} /dev/urandom > ${mnt}/during-outage.bin && sync`]);
    await fs.writeFile(path.join(mnt, "orders.txt"), "order 1 taken during the outage\n");
    spawnSync("sync");
    const r = await installTestAgent(site, {
      dir: tmp,
      name: "orig-recovered",
      device: rec.device,
      recoveryOf: job.id,
    });
    await copyAgentDir(r.configDir, path.join(mnt, AGENT_DIR));
    spawnSync("sync");
    await startAgent(r.configDir, "rec");
    await takePit(site, r.serverName);
    t.diagnostic(`recovered instance replicating at ${since()}`);

    // The boot environment of the original server, from its agent directory.
    const image = path.join(tmp, "failback.img");
    const made = await buildFailbackImage({
      out: image,
      bundleDir: built.dir,
      agentConfigDir: o.configDir,
      endpoint: `https://10.0.2.2:${site.port}`,
      disks: [{ index: 0, path: "/dev/vda" }],
      kernelVersion: guest.version,
      modulesRoot: guest.modulesRoot,
      then: "poweroff",
      compression: "zstd",
    });
    assert.equal((await fs.stat(image)).mode & 0o777, 0o600, "the image holds the agent's key");
    assert.equal(made.endpoint, `https://10.0.2.2:${site.port}`);
    assert.ok(
      made.modules.some((m) => m.endsWith("-virtio_net.ko")),
      made.modules.join(" "),
    );
    t.diagnostic(`image ${made.bytes} bytes, modules ${made.modules.join(" ")} at ${since()}`);

    // The original server's disk, not in use on the host: QEMU gets its image file.
    await run("umount", [orig.mountPoint!]);
    const started = await site.api<FailbackView>("/api/v1/failbacks", {
      method: "POST",
      body: { source: job.id },
    });
    const serial = path.join(tmp, "serial.log");
    qemu = spawn(
      "qemu-system-x86_64",
      [
        ...["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"],
        ...["-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"],
        ...["-chardev", `file,id=serial0,path=${serial}`, "-serial", "chardev:serial0"],
        ...[
          "-drive",
          `file=${orig.image},format=raw,if=none,id=disk0`,
          "-device",
          "virtio-blk-pci,drive=disk0",
        ],
        ...["-nic", "user,model=virtio-net-pci"],
        ...["-kernel", guest.vmlinuz, "-initrd", image],
        ...["-append", "console=ttyS0 panic=-1 quiet"],
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let qemuErr = "";
    qemu.stderr!.on("data", (d: Buffer) => (qemuErr += d.toString()));
    const exited = new Promise<number | null>((resolve) => qemu!.once("exit", (code) => resolve(code)));
    const serialText = () => fs.readFile(serial, "utf8").catch(() => "");
    const failback = () => site.api<FailbackView>(`/api/v1/failbacks/${started.id}`);
    let last: FailbackView | undefined;
    let tail = "";
    const alive = async () => {
      tail = (await serialText()).slice(-3000);
      if (qemu!.exitCode !== null) throw new Error(`QEMU exited: ${qemuErr}\n${tail}`);
      last = await failback();
      return last;
    };

    await until(
      "pass 1 complete in the boot environment",
      async () => (await alive()).completedPass >= 1,
      900_000,
      () => ({ failback: last, console: tail }),
    );
    t.diagnostic(`pass 1 complete at ${since()}`);
    const cut = await site.api<FailbackView>(`/api/v1/failbacks/${started.id}/cutover`, {
      method: "POST",
      body: {},
    });
    assert.equal(cut.state, "cutover");
    await until(
      "ready",
      async () => (await alive()).state === "ready",
      600_000,
      () => ({ failback: last, console: tail }),
    );
    const ready = await failback();
    assert.equal(ready.verify?.mismatched, 0);
    assert.ok(ready.cutoverPitId);
    const code = await Promise.race([
      exited,
      new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), 300_000).unref()),
    ]);
    assert.equal(code, 0, `QEMU powered off after the failback\n${(await serialText()).slice(-3000)}`);
    const text = await serialText();
    assert.match(text, /^lifeboat-failback: ready\r?$/m, text.slice(-3000));
    t.diagnostic(`ready and powered off at ${since()}`);
    for (const line of text.split(/\r?\n/).filter((l) => l.startsWith("lifeboat-failback:")))
      t.diagnostic(`serial: ${line}`);

    assert.match(
      text,
      /^lifeboat-failback: agent identity of this server restored on \/dev\/vda \(\/etc\/lifeboat\/agent\)\r?$/m,
    );

    // The disk holds the cut-over PIT's files, and the original server's agent directory again.
    const cutImg = path.join(tmp, "cutover.img");
    await exportPit(site, r.serverName, ready.cutoverPitId, cutImg);
    await run("e2fsck", ["-f", "-n", orig.image]);
    const want = await mountImage(cutImg, path.join(tmp, "cut-mnt"));
    const got = await mountImage(orig.image, path.join(tmp, "orig-mnt"));
    try {
      for (const f of ["base", "before.txt", "during-outage.bin", "orders.txt"])
        assert.equal(await fileHash(path.join(got, f)), await fileHash(path.join(want, f)), f);
      const agentFile = (root: string, f: string) => fs.readFile(path.join(root, AGENT_DIR, f));
      assert.deepEqual(
        await agentFile(want, "config.json"),
        await fs.readFile(path.join(r.configDir, "config.json")),
      );
      for (const f of ["config.json", "agent.key", "agent.pem", "ca.pem"])
        assert.deepEqual(
          await agentFile(got, f),
          await fs.readFile(path.join(o.configDir, f)),
          `${AGENT_DIR}/${f}`,
        );
      const generations = JSON.parse((await agentFile(got, "state/generations.json")).toString()) as unknown;
      assert.ok(generations, "the generations the failback gave the disk are kept");
      assert.equal((await fs.stat(path.join(got, AGENT_DIR))).mode & 0o777, 0o700);
      assert.equal((await fs.stat(path.join(got, AGENT_DIR, "agent.key"))).mode & 0o777, 0o600);
    } finally {
      await run("umount", [want]);
      await run("umount", [got]);
    }
  });
});
