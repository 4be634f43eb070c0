/**
 * Tests that need the real machine (root, loop devices, tracefs, fsfreeze)
 * ask for it here. Where a capability is missing the test is skipped with the
 * reason; with LIFEBOAT_TEST_STRICT=1 (CI on machines that have them all) a
 * missing capability fails the test instead, so a broken environment cannot
 * pass as a row of skips.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { TestContext } from "node:test";

export type Capability = "root" | "loop" | "tracefs" | "fsfreeze" | "qemu" | "netns";

export const strictCapabilities = process.env.LIFEBOAT_TEST_STRICT === "1";

function onPath(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

const checks: Record<Capability, () => string | null> = {
  root: () => (isRoot() ? null : "needs root"),
  loop: () => {
    if (!isRoot()) return "loop devices need root";
    if (!existsSync("/dev/loop-control")) return "no /dev/loop-control (loop module not loaded?)";
    for (const cmd of ["losetup", "mkfs.ext4", "mount", "umount"])
      if (!onPath(cmd)) return `${cmd} is not installed (util-linux, e2fsprogs)`;
    return null;
  },
  tracefs: () => {
    if (!isRoot()) return "tracefs needs root";
    let fss = "";
    try {
      fss = readFileSync("/proc/filesystems", "utf8");
    } catch {
      return "cannot read /proc/filesystems";
    }
    if (!/\ttracefs\n/.test(fss) && !/\tdebugfs\n/.test(fss)) return "the kernel has no tracefs";
    if (!existsSync("/sys/kernel/tracing") && !existsSync("/sys/kernel/debug"))
      return "neither /sys/kernel/tracing nor /sys/kernel/debug exists";
    return null;
  },
  fsfreeze: () => {
    if (!isRoot()) return "fsfreeze needs root";
    return onPath("fsfreeze") ? null : "fsfreeze is not installed (util-linux)";
  },
  netns: () => {
    if (!isRoot()) return "network namespaces need root";
    if (!onPath("ip")) return "ip is not installed (iproute2)";
    if (!onPath("nft")) return "nft is not installed (nftables)";
    return spawnSync("ip", ["netns", "list"], { stdio: "ignore" }).status === 0
      ? null
      : "ip netns does not work here";
  },
  qemu: () => {
    for (const cmd of ["qemu-system-x86_64", "qemu-img"])
      if (!onPath(cmd)) return `${cmd} is not installed (qemu-system-x86, qemu-utils)`;
    return null;
  },
};

const cache = new Map<Capability, string | null>();

/** Why the capabilities are missing (joined), or null when all are present. */
export function missingCapabilities(...caps: Capability[]): string | null {
  const reasons: string[] = [];
  for (const cap of caps) {
    if (!cache.has(cap)) cache.set(cap, checks[cap]());
    const reason = cache.get(cap);
    if (reason) reasons.push(`${cap}: ${reason}`);
  }
  return reasons.length ? reasons.join("; ") : null;
}

/**
 * Inside a test: returns true when every capability is present. Otherwise
 * skips the test with the reason and returns false (the test should return),
 * or under LIFEBOAT_TEST_STRICT=1 throws, failing it.
 */
export function requireCapability(t: TestContext, ...caps: Capability[]): boolean {
  const missing = missingCapabilities(...caps);
  if (missing === null) return true;
  if (strictCapabilities) throw new Error(`missing capability under LIFEBOAT_TEST_STRICT=1: ${missing}`);
  t.skip(missing);
  return false;
}

/**
 * For describe(): `{ skip: reason }` when a capability is missing and not in
 * strict mode, else `{}` (under strict mode the tests then run and fail on
 * their own, each calling requireCapability).
 */
export function skipUnless(...caps: Capability[]): { skip?: string } {
  const missing = missingCapabilities(...caps);
  return missing !== null && !strictCapabilities ? { skip: missing } : {};
}
