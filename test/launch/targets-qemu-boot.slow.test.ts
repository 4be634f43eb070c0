/**
 * The QEMU target boots a recovered-style disk under TCG (no KVM needed): an
 * MBR disk whose ext4 partition is the root filesystem, started with a
 * Debian kernel and a small initramfs (test/support/boot-disk.ts). The
 * success pattern is what the system's init prints on the serial console.
 * The kernel comes from Debian's package, fetched once and cached
 * (test/support/boot-kernel.ts); without it, or without QEMU or a static
 * busybox, the tests skip, except under LIFEBOAT_TEST_STRICT=1.
 */
import assert from "node:assert/strict";
import { mkdtempSync, promises as fs, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { type LaunchedDisk, runQemuTarget, stopQemu } from "../../src/launch/targets/index.js";
import { makeBootInitramfs, makeRecoveredDisk } from "../support/boot-disk.js";
import { debianKernel, staticBusybox, type BootKernel } from "../support/boot-kernel.js";
import { missingCapabilities, strictCapabilities } from "../support/capabilities.js";
import { processesMentioning, processRunning } from "../support/processes.js";
import { targetRun } from "../support/target-run.js";

interface Guest {
  kernel: BootKernel;
  initrd: string;
  disk: string;
  sizeBytes: number;
}

let guest: Guest | string = "not prepared";
const work = mkdtempSync(path.join(os.tmpdir(), "lifeboat-boot-"));

/** Skips (or, under LIFEBOAT_TEST_STRICT=1, fails) when the guest could not be prepared. */
function needGuest(t: TestContext): Guest | null {
  if (typeof guest !== "string") return guest;
  if (strictCapabilities) throw new Error(`LIFEBOAT_TEST_STRICT=1 and no bootable guest: ${guest}`);
  t.skip(guest);
  return null;
}

/** A copy of the disk for one test: the guest may write to it. */
async function diskCopy(g: Guest, name: string): Promise<LaunchedDisk> {
  const p = path.join(work, name);
  await fs.copyFile(g.disk, p);
  return { index: 0, path: p, sizeBytes: g.sizeBytes };
}

const BOOT = {
  successPattern: "^LIFEBOAT-BOOTED web-1$",
  timeoutSeconds: 120,
  memoryMiB: 256,
  cpus: 1,
  accel: "tcg",
} as const;
const APPEND = "console=ttyS0 quiet panic=-1 root=/dev/vda1";

void describe("QEMU target: booting a recovered disk", () => {
  before(async () => {
    const missing = missingCapabilities("qemu");
    if (missing) return void (guest = missing);
    let busybox: string;
    try {
      busybox = await staticBusybox();
    } catch (err) {
      return void (guest = (err as Error).message);
    }
    const kernel = await debianKernel();
    if (typeof kernel === "string") return void (guest = kernel);
    const initrd = await makeBootInitramfs(work, kernel, busybox);
    const disk = await makeRecoveredDisk(work, busybox, { message: "LIFEBOAT-BOOTED", hostname: "web-1" });
    guest = { kernel, initrd, disk: disk.path, sizeBytes: disk.sizeBytes };
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  void it("sees the success pattern on the serial console, and QEMU is gone after", async (t) => {
    const g = needGuest(t);
    if (!g) return;
    const run = targetRun(t, [await diskCopy(g, "boot-a.img")]);
    // The guest stays up after its message, as a real server would: the target stops it.
    const out = await runQemuTarget(run, {
      ...BOOT,
      kernel: g.kernel.vmlinuz,
      initrd: g.initrd,
      append: `${APPEND} lifeboat.stay`,
    });
    assert.equal(out.ok, true, out.message);
    assert.match(
      out.message,
      /^the server booted: .* matched "LIFEBOAT-BOOTED web-1" after [\d.]+ s \(tcg\)$/,
    );
    assert.equal(out.details.accel, "tcg");
    assert.equal(typeof out.details.bootSeconds, "number");
    assert.equal(out.details.running, false);
    assert.ok(run.lines.some((l) => l.message === "serial: LIFEBOAT-BOOTED web-1"));
    assert.match(await fs.readFile(path.join(run.workDir, "serial.log"), "utf8"), /LIFEBOAT-BOOTED web-1/);
    assert.deepEqual(await processesMentioning("qemu-system", run.workDir), []);
  });

  void it("keeps the machine running when asked, until stopQemu", async (t) => {
    const g = needGuest(t);
    if (!g) return;
    const run = targetRun(t, [await diskCopy(g, "boot-b.img")]);
    const out = await runQemuTarget(run, {
      ...BOOT,
      kernel: g.kernel.vmlinuz,
      initrd: g.initrd,
      append: `${APPEND} lifeboat.stay`,
      keepRunning: true,
    });
    const pid = out.details.pid as number;
    t.after(() => stopQemu(pid));
    assert.equal(out.ok, true, out.message);
    assert.equal(out.details.running, true);
    assert.match(out.message, new RegExp(`QEMU keeps running as pid ${pid}$`));
    assert.equal(await processRunning(pid), true);
    assert.equal(await stopQemu(pid), true);
    assert.equal(await processRunning(pid), false);
    assert.equal(await stopQemu(pid), false);
  });
});
