import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ImageFile, probeFilesystem, readPartitionTable } from "../../src/launch/index.js";
import { makeDisk, requires } from "./fixtures.js";

const ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649";
const LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

async function table(file: string) {
  const img = await ImageFile.open(file);
  try {
    return await readPartitionTable(img);
  } finally {
    await img.close();
  }
}

async function blank(file: string, mib: number): Promise<void> {
  await fs.writeFile(file, "");
  await fs.truncate(file, mib << 20);
}

void describe(
  "partition tables and filesystems",
  requires({ tools: ["sfdisk", "mkfs.ext4", "mkswap"] }),
  () => {
    let work = "";
    before(async () => {
      work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-partitions-"));
    });
    after(async () => {
      await fs.rm(work, { recursive: true, force: true });
    });

    void it("reads an MBR with a bootable primary and logical partitions in an extended one", async () => {
      const file = path.join(work, "mbr.img");
      await blank(file, 16);
      const script = [
        "label: dos",
        "label-id: 0x1234abcd",
        "start=2048, size=8192, type=83, bootable",
        "start=10240, size=20480, type=5",
        "start=12288, size=4096, type=82",
        "start=18432, size=4096, type=83",
      ].join("\n");
      execFileSync("sfdisk", ["-q", file], { input: script });
      const t = await table(file);
      assert.equal(t.type, "mbr");
      assert.equal(t.diskId, "1234abcd");
      assert.deepEqual(
        t.partitions.map((p) => [p.number, p.start / 512, p.size / 512, p.type, p.bootable, p.partUuid]),
        [
          [1, 2048, 8192, "83", true, "1234abcd-01"],
          [5, 12288, 4096, "82", false, "1234abcd-05"],
          [6, 18432, 4096, "83", false, "1234abcd-06"],
        ],
      );
    });

    void it("reads a GPT behind its protective MBR: types, names, flags, unique GUIDs", async () => {
      const file = path.join(work, "gpt.img");
      await blank(file, 16);
      const script = [
        "label: gpt",
        "label-id: 6A0F1E2D-3C4B-4A59-8687-98A9BACBDCED",
        `start=2048, size=2048, type=${BIOS_BOOT}, name=bios`,
        `start=4096, size=8192, type=${ESP}, name="EFI System", uuid=11111111-2222-4333-8444-555555555555`,
        `start=12288, size=16384, type=${LINUX}, name=root, attrs=LegacyBIOSBootable`,
      ].join("\n");
      execFileSync("sfdisk", ["-q", file], { input: script });
      const t = await table(file);
      assert.equal(t.type, "gpt");
      assert.equal(t.diskId, "6a0f1e2d-3c4b-4a59-8687-98a9bacbdced");
      assert.deepEqual(t.warnings, []);
      const [bios, esp, root] = t.partitions;
      assert.equal(bios!.biosBoot, true);
      assert.equal(esp!.esp, true);
      assert.equal(esp!.name, "EFI System");
      assert.equal(esp!.partUuid, "11111111-2222-4333-8444-555555555555");
      assert.equal(esp!.start, 4096 * 512);
      assert.equal(root!.type, LINUX);
      assert.equal(root!.typeName, "Linux filesystem");
      assert.equal(root!.bootable, true);
      assert.equal(root!.size, 16384 * 512);
    });

    void it("uses the backup GPT when the primary header is damaged, and says when both are", async () => {
      const file = path.join(work, "gpt-damaged.img");
      await makeDisk(file, "gpt", [{ sizeMiB: 8, type: "linux" }]);
      const fh = await fs.open(file, "r+");
      await fh.write(Buffer.from("garbage!"), 0, 8, 512 + 24); // inside the primary header: its CRC fails
      await fh.close();
      let t = await table(file);
      assert.equal(t.partitions.length, 1);
      assert.match(t.warnings[0]!, /primary GPT is damaged \(header CRC mismatch\)/);
      const size = (await fs.stat(file)).size;
      const fh2 = await fs.open(file, "r+");
      await fh2.write(Buffer.from("garbage!"), 0, 8, size - 512 + 24);
      await fh2.close();
      t = await table(file);
      assert.equal(t.partitions.length, 0);
      assert.match(t.warnings[0]!, /GPT damaged/);
    });

    void it("detects ext4 and swap with UUID and label, and nothing on garbage", async () => {
      const file = path.join(work, "fs.img");
      await makeDisk(file, "gpt", [
        {
          sizeMiB: 8,
          type: "linux",
          fs: "ext4",
          uuid: "2b5e0f6a-0c1d-4e2f-9a3b-4c5d6e7f8091",
          label: "rootfs",
        },
        {
          sizeMiB: 4,
          type: "swap",
          fs: "swap",
          uuid: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
          label: "swap0",
        },
        { sizeMiB: 4, type: "linux" },
      ]);
      const img = await ImageFile.open(file);
      try {
        const t = await readPartitionTable(img);
        const found = [];
        for (const p of t.partitions) found.push(await probeFilesystem(img, p.start, p.size));
        assert.deepEqual(found, [
          { type: "ext4", uuid: "2b5e0f6a-0c1d-4e2f-9a3b-4c5d6e7f8091", label: "rootfs" },
          { type: "swap", uuid: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f", label: "swap0" },
          null,
        ]);
      } finally {
        await img.close();
      }
    });

    void it("a filesystem on the whole disk is not mistaken for a partition table", async () => {
      const file = path.join(work, "whole.img");
      await makeDisk(file, "none", [{ sizeMiB: 8, type: "linux", fs: "ext4", label: "data" }]);
      assert.equal((await table(file)).type, "none");
    });

    void it(
      "a vfat filesystem on the whole disk (its boot sector has 55 AA) is not an MBR",
      requires({ tools: ["mkfs.vfat"] }),
      async () => {
        const file = path.join(work, "vfat.img");
        await blank(file, 8);
        execFileSync("mkfs.vfat", ["-i", "1A2B3C4D", "-n", "ESP", file], { stdio: "ignore" });
        const img = await ImageFile.open(file);
        try {
          assert.equal((await readPartitionTable(img)).type, "none");
          assert.deepEqual(await probeFilesystem(img, 0, img.size), {
            type: "vfat",
            uuid: "1A2B-3C4D",
            label: "ESP",
          });
        } finally {
          await img.close();
        }
      },
    );
  },
);
