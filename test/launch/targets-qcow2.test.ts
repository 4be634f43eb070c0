import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { isLifeboatError } from "../../src/base/index.js";
import { convertToQcow2 } from "../../src/launch/targets/index.js";
import { requireCapability } from "../support/capabilities.js";
import { targetRun } from "../support/target-run.js";

const run = promisify(execFile);

void describe("qcow2 conversion", () => {
  void it("writes a qcow2 beside the raw image with the same contents", async (t) => {
    if (!requireCapability(t, "qemu")) return;
    const { workDir } = targetRun(t);
    const raw = path.join(workDir, "disk-0.img");
    const data = Buffer.alloc(8 << 20);
    data.write("lifeboat disk 0", 4096);
    data.fill(0xab, 5 << 20, 6 << 20);
    await fs.writeFile(raw, data);
    const out = await convertToQcow2(raw);
    assert.equal(out.path, path.join(workDir, "disk-0.qcow2"));
    assert.equal(out.sizeBytes, (await fs.stat(out.path)).size);
    assert.ok(out.sizeBytes < data.length, "zero blocks take no room");
    const info = JSON.parse((await run("qemu-img", ["info", "--output=json", out.path])).stdout) as {
      format: string;
      "virtual-size": number;
    };
    assert.equal(info.format, "qcow2");
    assert.equal(info["virtual-size"], data.length);
    const back = path.join(workDir, "back.raw");
    await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", out.path, back]);
    assert.ok((await fs.readFile(back)).equals(data));
    assert.deepEqual((await fs.readdir(workDir)).sort(), ["back.raw", "disk-0.img", "disk-0.qcow2"]);
  });

  void it("fails cleanly, leaving nothing behind, when the raw image is missing", async (t) => {
    if (!requireCapability(t, "qemu")) return;
    const { workDir } = targetRun(t);
    await assert.rejects(
      convertToQcow2(path.join(workDir, "absent.raw")),
      (err) => isLifeboatError(err, "LAUNCH_QCOW2_FAILED") && /absent\.raw/.test(err.message),
    );
    assert.deepEqual(await fs.readdir(workDir), []);
  });

  void it("says how to install qemu-img when it is missing", async (t) => {
    const { workDir } = targetRun(t);
    const saved = process.env.PATH;
    process.env.PATH = workDir;
    try {
      await assert.rejects(
        convertToQcow2(path.join(workDir, "x.raw")),
        (err) => isLifeboatError(err, "LAUNCH_QEMU_IMG_MISSING") && /qemu-utils/.test(err.hint),
      );
    } finally {
      process.env.PATH = saved;
    }
  });
});
