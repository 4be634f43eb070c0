import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import os from "node:os";
import { describe, it } from "node:test";
import { discoverBlockDevices, discoverHost, parseOsRelease } from "../../src/agent/index.js";
import { requireCapability } from "../support/capabilities.js";
import { loopDiskForTest } from "../support/loop-disk.js";

void describe("discovery", () => {
  void it("lists a loop device with its size, backing file, filesystem and mount", async (t) => {
    if (!requireCapability(t, "root", "loop")) return;
    const disk = await loopDiskForTest(t, { sizeMiB: 48 });
    const bare = await loopDiskForTest(t, { sizeMiB: 8, ext4: false });
    const devices = await discoverBlockDevices();
    const d = devices.find((x) => x.path === disk.device);
    assert.ok(d, `${disk.device} not among ${devices.map((x) => x.name).join(", ")}`);
    assert.equal(d.kind, "loop");
    assert.equal(d.major, disk.major);
    assert.equal(d.minor, disk.minor);
    assert.equal(d.sizeBytes, 48 << 20);
    assert.equal(d.removable, false);
    assert.equal(d.readOnly, false);
    assert.equal(d.backingFile, disk.image);
    assert.equal(d.fsType, "ext4");
    assert.deepEqual(d.mounts, [{ mountPoint: disk.mountPoint, fsType: "ext4", readOnly: false }]);
    assert.deepEqual(d.partitions, []);

    const b = devices.find((x) => x.path === bare.device);
    assert.ok(b);
    assert.equal(b.fsType, null, "an all-zero device has no recognisable format");
    assert.deepEqual(b.mounts, []);
    assert.deepEqual(
      devices.map((x) => x.name),
      devices.map((x) => x.name).sort(),
    );
  });

  void it("reports the kernel and the OS release", async () => {
    const h = await discoverHost();
    assert.equal(h.kernel, os.release());
    assert.equal(h.arch, os.arch());
    let osRelease = "";
    try {
      osRelease = readFileSync("/etc/os-release", "utf8");
    } catch {
      // covered by the parser test below
    }
    if (osRelease) assert.match(osRelease, new RegExp(`^ID="?${h.os.id}"?$`, "m"));
  });

  void it("parses os-release quoting", () => {
    assert.deepEqual(
      parseOsRelease(
        'PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"\nID="sles"\nVERSION_ID=\'15.5\'\n# c\nX\n',
      ),
      { id: "sles", versionId: "15.5", prettyName: "SUSE Linux Enterprise Server 15 SP5" },
    );
    assert.deepEqual(parseOsRelease(""), { id: null, versionId: null, prettyName: null });
  });
});
