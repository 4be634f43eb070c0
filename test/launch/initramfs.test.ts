import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import { parseInitramfs } from "../../src/launch/index.js";
import { type Packing, makeInitramfs, requires } from "./fixtures.js";

const V = "6.1.0-13-amd64";
const MODULES = ["virtio_blk.ko", "virtio-net.ko.xz", "virtio_scsi.ko.zst", "xen-blkfront.ko.gz", "ext4.ko"];

void describe("initramfs", requires({ tools: ["cpio", "gzip", "zstd", "xz", "lz4"] }), () => {
  let work = "";
  before(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-initramfs-"));
  });
  after(async () => {
    await fs.rm(work, { recursive: true, force: true });
  });

  for (const compression of ["none", "gzip", "zstd", "xz", "lz4", "lz4-legacy"] as Packing[]) {
    for (const early of [false, true]) {
      void it(`lists the modules of a ${compression} archive${early ? " behind an early uncompressed cpio" : ""}`, async () => {
        const data = await makeInitramfs(work, { version: V, modules: MODULES, compression, early });
        const info = await parseInitramfs(data);
        assert.deepEqual(info.modules, ["ext4", "virtio_blk", "virtio_net", "virtio_scsi", "xen_blkfront"]);
        assert.deepEqual(info.kernelVersions, [V]);
        assert.deepEqual(info.segments, early ? ["none", compression] : [compression]);
      });
    }
  }

  void it("tolerates zero padding after a compressed archive", async () => {
    for (const compression of ["gzip", "zstd", "xz", "lz4"] as Packing[]) {
      const data = await makeInitramfs(work, { version: V, modules: MODULES, compression, early: true });
      const info = await parseInitramfs(Buffer.concat([data, Buffer.alloc(4096)]));
      assert.equal(info.modules.length, 5, compression);
    }
  });

  void it("reads a modules.builtin inside the initramfs", async () => {
    const data = await makeInitramfs(work, {
      version: V,
      modules: [],
      compression: "gzip",
      builtinInside: ["kernel/drivers/block/xen-blkfront.ko", "kernel/drivers/net/ena/ena.ko"],
    });
    assert.deepEqual((await parseInitramfs(data)).builtin, ["ena", "xen_blkfront"]);
  });

  void it("says a truncated compressed initramfs is corrupt", async () => {
    for (const compression of ["gzip", "zstd", "xz", "lz4"] as Packing[]) {
      const data = await makeInitramfs(work, { version: V, modules: MODULES, compression, early: true });
      await assert.rejects(
        parseInitramfs(data.subarray(0, data.length - 40)),
        (err) => isLifeboatError(err, "LAUNCH_INITRAMFS_CORRUPT"),
        compression,
      );
    }
  });

  void it("says damaged compressed data is corrupt", async () => {
    const data = await makeInitramfs(work, { version: V, modules: MODULES, compression: "gzip" });
    const bad = Buffer.from(data);
    for (let i = 20; i < bad.length - 8; i += 7) bad[i] = bad[i]! ^ 0x5a;
    await assert.rejects(parseInitramfs(bad), (err) => isLifeboatError(err, "LAUNCH_INITRAMFS_CORRUPT"));
  });

  void it("says garbage, an empty file and a broken cpio header are corrupt", async () => {
    const garbage = Buffer.alloc(65536);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 2654435761) >>> 24 || 1;
    for (const data of [garbage, Buffer.alloc(0), Buffer.alloc(1024)]) {
      await assert.rejects(parseInitramfs(data), (err) => isLifeboatError(err, "LAUNCH_INITRAMFS_CORRUPT"));
    }
    const plain = await makeInitramfs(work, { version: V, modules: MODULES, compression: "none" });
    const bad = Buffer.from(plain);
    bad.write("ZZZZZZZZ", 6 + 11 * 8, "latin1"); // namesize field of the first header
    await assert.rejects(parseInitramfs(bad), (err) => isLifeboatError(err, "LAUNCH_INITRAMFS_CORRUPT"));
  });

  void it("refuses a compression it does not read, with its own code", async () => {
    const fake = Buffer.concat([Buffer.from("BZh91AY&SY"), Buffer.alloc(100)]);
    await assert.rejects(parseInitramfs(fake), (err) => isLifeboatError(err, "LAUNCH_INITRAMFS_UNSUPPORTED"));
  });

  void it("stops at the unpacked-size bound", async () => {
    const data = await makeInitramfs(work, { version: V, modules: MODULES, compression: "gzip" });
    await assert.rejects(parseInitramfs(data, 1000), (err) =>
      isLifeboatError(err, "LAUNCH_INITRAMFS_CORRUPT"),
    );
  });
});
