import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type ServerFilesystem,
  matchEntry,
  needsDevice,
  parseFstab,
} from "../../src/launch/inspect/fstab.js";

const fss: ServerFilesystem[] = [
  {
    type: "ext4",
    uuid: "0e6a2f5c-1111-4222-8333-944455556666",
    label: "root",
    offset: 1 << 20,
    size: 8 << 20,
    partition: 1,
    disk: 0,
    partitionInfo: {
      number: 1,
      start: 1 << 20,
      size: 8 << 20,
      type: "83",
      typeName: "Linux",
      partUuid: "1234abcd-01",
      bootable: true,
      esp: false,
      biosBoot: false,
    },
  },
  {
    type: "xfs",
    uuid: "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    label: "my data",
    offset: 0,
    size: 8 << 20,
    disk: 1,
  },
  {
    type: "swap",
    uuid: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
    offset: 2 << 20,
    size: 1 << 20,
    partition: 2,
    disk: 2,
  },
];

function status(line: string) {
  const [e] = parseFstab(line);
  const m = matchEntry(e!, fss);
  return [m.status, m.disk, m.partition, m.optional];
}

void describe("fstab", () => {
  void it("parses entries, skipping comments and blank lines, with octal escapes", () => {
    const entries = parseFstab(
      "# comment\n\nLABEL=my\\040data /srv/my\\040data xfs defaults,nofail 0 2\n  /dev/sda1\t/ ext4\n",
    );
    assert.deepEqual(entries, [
      { spec: "LABEL=my data", mountPoint: "/srv/my data", type: "xfs", options: ["defaults", "nofail"] },
      { spec: "/dev/sda1", mountPoint: "/", type: "ext4", options: ["defaults"] },
    ]);
  });

  void it("checks only entries that need a block device of the server", () => {
    const lines = [
      "proc /proc proc defaults 0 0",
      "tmpfs /tmp tmpfs defaults 0 0",
      "nfs1:/export /mnt/nfs nfs defaults 0 0",
      "//filer/share /mnt/smb cifs credentials=/root/c 0 0",
      "/srv/a /srv/b none bind 0 0",
      "/swapfile none swap sw 0 0",
      "UUID=x / ext4 defaults 0 1",
      "/dev/vda2 none swap sw 0 0",
    ];
    assert.deepEqual(parseFstab(lines.join("\n")).map(needsDevice), [
      false,
      false,
      false,
      false,
      false,
      false,
      true,
      true,
    ]);
  });

  void it("matches by UUID (any case), LABEL, by-uuid and by-label paths, PARTUUID", () => {
    assert.deepEqual(status("UUID=0E6A2F5C-1111-4222-8333-944455556666 / ext4 defaults 0 1"), [
      "matched",
      0,
      1,
      false,
    ]);
    assert.deepEqual(status('LABEL="root" / ext4 defaults 0 1'), ["matched", 0, 1, false]);
    assert.deepEqual(status("/dev/disk/by-label/my\\x20data /srv xfs defaults 0 2"), [
      "matched",
      1,
      undefined,
      false,
    ]);
    assert.deepEqual(status("/dev/disk/by-uuid/5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f none swap sw 0 0"), [
      "matched",
      2,
      2,
      false,
    ]);
    assert.deepEqual(status("PARTUUID=1234abcd-01 / ext4 defaults 0 1"), ["matched", 0, 1, false]);
  });

  void it("resolves device names by disk order, and leaves LVM and MD unverified", () => {
    assert.deepEqual(status("/dev/sda1 / ext4 defaults 0 1"), ["device", 0, 1, false]);
    assert.deepEqual(status("/dev/xvdb /srv xfs defaults 0 2"), ["device", 1, undefined, false]);
    assert.deepEqual(status("/dev/nvme2n1p2 none swap sw 0 0"), ["device", 2, 2, false]);
    assert.deepEqual(status("/dev/vdb1 /srv xfs defaults 0 2"), ["unmatched", undefined, undefined, false]);
    assert.deepEqual(status("/dev/mapper/vg0-data /data xfs defaults 0 2")[0], "unverified");
    assert.deepEqual(status("/dev/vg0/data /data xfs defaults 0 2")[0], "unverified");
    assert.deepEqual(status("/dev/md0 /data xfs defaults 0 2")[0], "unverified");
  });

  void it("an entry that matches nothing is optional with nofail or noauto", () => {
    assert.deepEqual(status("UUID=deadbeef /x ext4 defaults 0 2"), [
      "unmatched",
      undefined,
      undefined,
      false,
    ]);
    assert.deepEqual(status("LABEL=usb /x ext4 noauto 0 2"), ["unmatched", undefined, undefined, true]);
  });
});
