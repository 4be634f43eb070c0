/**
 * The QEMU target without a guest operating system: its command line, its
 * errors, and a machine whose console never shows the pattern (QEMU is
 * stopped at the timeout and gone afterwards). Booting a real disk is in
 * targets-qemu-boot.slow.test.ts.
 */
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { runQemuTarget } from "../../src/launch/targets/index.js";
import { qemuArgs } from "../../src/launch/targets/qemu-args.js";
import { requireCapability } from "../support/capabilities.js";
import { processesMentioning } from "../support/processes.js";
import { targetRun } from "../support/target-run.js";

async function blankDisk(dir: string, name: string): Promise<string> {
  const p = path.join(dir, name);
  await fs.writeFile(p, Buffer.alloc(1 << 20));
  return p;
}

void describe("QEMU target", () => {
  void it("builds an isolated machine: virtio disks in order, no network, serial to a file", () => {
    const args = qemuArgs({
      accel: "tcg",
      memoryMiB: 512,
      cpus: 1,
      disks: [
        { index: 1, path: "/d/b,1.img", sizeBytes: 1 },
        { index: 0, path: "/d/a.img", sizeBytes: 1 },
      ],
      serialLog: "/w/serial.log",
      network: "none",
      name: "lifeboat-web-1",
    });
    const line = args.join(" ");
    assert.match(line, /-accel tcg -cpu max -m 512 -smp 1 -nodefaults -display none/);
    assert.match(line, /-no-reboot/);
    assert.match(line, /-chardev file,id=serial0,path=\/w\/serial.log -serial chardev:serial0/);
    assert.match(
      line,
      /-drive file=\/d\/a.img,format=raw,if=none,id=disk0 -device virtio-blk-pci,drive=disk0,bootindex=0 -drive file=\/d\/b,,1.img,format=raw,if=none,id=disk1 -device virtio-blk-pci,drive=disk1 /,
    );
    assert.match(line, /-nic none/);
    assert.doesNotMatch(line, /-kernel/);
    const user = qemuArgs({
      accel: "kvm",
      memoryMiB: 1,
      cpus: 1,
      disks: [],
      serialLog: "s",
      network: "user",
      name: "n",
    });
    assert.match(user.join(" "), /-cpu host .*-nic user,model=virtio-net-pci,restrict=on/);
  });

  void it("says how to install QEMU when it is missing", async (t) => {
    const run = targetRun(t);
    const saved = process.env.PATH;
    process.env.PATH = run.workDir;
    try {
      await assert.rejects(
        runQemuTarget(run, { successPattern: "x", timeoutSeconds: 1 }),
        (err) =>
          isLifeboatError(err, "LAUNCH_QEMU_MISSING") && /apt-get install qemu-system-x86/.test(err.hint),
      );
    } finally {
      process.env.PATH = saved;
    }
  });

  void it("refuses a success pattern that is empty or not a regular expression", async (t) => {
    const run = targetRun(t);
    await assert.rejects(runQemuTarget(run, { successPattern: "login(", timeoutSeconds: 1 }), (err) =>
      isLifeboatError(err, "LAUNCH_BAD_SUCCESS_PATTERN"),
    );
    await assert.rejects(runQemuTarget(run, { successPattern: "", timeoutSeconds: 1 }), (err) =>
      isLifeboatError(err, "LAUNCH_BAD_SUCCESS_PATTERN"),
    );
  });

  void it("is not ok when the pattern never appears, and stops QEMU", async (t) => {
    if (!requireCapability(t, "qemu")) return;
    const run = targetRun(t);
    run.disks.push({ index: 0, path: await blankDisk(run.workDir, "blank.img"), sizeBytes: 1 << 20 });
    const out = await runQemuTarget(run, {
      successPattern: "never-printed",
      timeoutSeconds: 2,
      memoryMiB: 64,
      cpus: 1,
      accel: "tcg",
    });
    assert.equal(out.ok, false);
    assert.match(out.message, /\/never-printed\/ did not appear on the serial console within 2 s \(tcg\)/);
    assert.equal(out.details.accel, "tcg");
    assert.equal(out.details.bootSeconds, null);
    assert.equal(out.details.serialLog, path.join(run.workDir, "serial.log"));
    assert.equal(out.details.running, false);
    assert.deepEqual(await processesMentioning(run.workDir), []);
    assert.ok(run.lines.some((l) => /^starting .*qemu-system-x86_64 /.test(l.message)));
  });

  void it("reports QEMU's own error when it cannot start the machine", async (t) => {
    if (!requireCapability(t, "qemu")) return;
    const run = targetRun(t, [{ index: 0, path: "/nonexistent/disk.img", sizeBytes: 1 }]);
    const out = await runQemuTarget(run, {
      successPattern: "x",
      timeoutSeconds: 20,
      memoryMiB: 64,
      accel: "tcg",
    });
    assert.equal(out.ok, false);
    assert.match(out.message, /^QEMU exited \(status 1\) before \/x\/ appeared: .*\/nonexistent\/disk.img/);
  });

  void it("stops QEMU when the launch is cancelled", async (t) => {
    if (!requireCapability(t, "qemu")) return;
    const run = targetRun(t);
    run.disks.push({ index: 0, path: await blankDisk(run.workDir, "blank.img"), sizeBytes: 1 << 20 });
    setTimeout(() => run.abort.abort(), 500);
    const out = await runQemuTarget(run, {
      successPattern: "x",
      timeoutSeconds: 60,
      memoryMiB: 64,
      accel: "tcg",
    });
    assert.equal(out.ok, false);
    assert.match(out.message, /cancelled/);
    assert.deepEqual(await processesMentioning(run.workDir), []);
  });
});
