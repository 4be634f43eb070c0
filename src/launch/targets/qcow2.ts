/**
 * Converting a materialized raw image to qcow2 (for hypervisors and clouds
 * that take qcow2 uploads; zero blocks take no room). Written under a
 * temporary name and renamed, so a qcow2 under the final name is complete.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { LifeboatError } from "../../base/index.js";
import { childPath, findExecutable } from "./executables.js";

const exec = promisify(execFile);

/** Writes RAW.qcow2 beside the raw image (a .raw or .img suffix is replaced); the raw image stays. */
export async function convertToQcow2(rawPath: string): Promise<{ path: string; sizeBytes: number }> {
  const qemuImg = await findExecutable("qemu-img");
  if (qemuImg === null)
    throw new LifeboatError("LAUNCH_QEMU_IMG_MISSING", "qemu-img cannot be found on this machine", {
      hint: "install it (apt-get install qemu-utils on Debian and Ubuntu, dnf install qemu-img on RHEL)",
    });
  const out = path.join(path.dirname(rawPath), path.basename(rawPath).replace(/\.(raw|img)$/, "") + ".qcow2");
  const tmp = `${out}.tmp-${randomBytes(4).toString("hex")}`;
  try {
    await exec(qemuImg, ["convert", "-q", "-f", "raw", "-O", "qcow2", rawPath, tmp], {
      env: { PATH: childPath(), LC_ALL: "C" },
      maxBuffer: 1 << 20,
    });
    await fs.rename(tmp, out);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    const stderr = ((err as { stderr?: string }).stderr ?? "").trim();
    throw new LifeboatError(
      "LAUNCH_QCOW2_FAILED",
      `converting ${rawPath} to qcow2 failed: ${stderr.split("\n").pop() || (err as Error).message}`,
      {
        hint: "check that the image exists and the directory has room for the qcow2 (up to the raw image's used size)",
        cause: err,
      },
    );
  }
  return { path: out, sizeBytes: (await fs.stat(out)).size };
}
