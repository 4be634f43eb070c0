import assert from "node:assert/strict";
import { it } from "node:test";
import { readinessLines, readyCell } from "../../src/cli/servers.js";

const xen = {
  profile: "xen",
  ready: false,
  verdict: "not ready for profile xen: 1 problem",
  problems: [
    {
      code: "LAUNCH_DRIVERS_MISSING",
      severity: "error",
      message: "the initramfs of kernel 6.1.0 lacks xen-blkfront and xen-netfront",
      remedy: "install the drivers and regenerate it with update-initramfs -u -k 6.1.0",
    },
  ],
  checkedAt: "2026-11-29T10:00:00.000Z",
};

void it("servers list: the READY column", () => {
  assert.equal(readyCell(xen), "NOT-READY:xen");
  assert.equal(readyCell({ ...xen, ready: true, profile: "kvm" }), "ready:kvm");
  assert.equal(readyCell(null), "-");
  assert.equal(readyCell(undefined), "-", "an older control plane");
});

void it("servers show: the readiness line, then each problem and its remedy", () => {
  assert.deepEqual(readinessLines(xen), [
    "readiness: not ready for profile xen: 1 problem (checked 2026-11-29T10:00:00.000Z by the agent)",
    "  error LAUNCH_DRIVERS_MISSING: the initramfs of kernel 6.1.0 lacks xen-blkfront and xen-netfront",
    "    remedy: install the drivers and regenerate it with update-initramfs -u -k 6.1.0",
  ]);
  assert.deepEqual(readinessLines(null), [
    "readiness: unknown (the agent has not reported its boot inventory yet)",
  ]);
});
