/**
 * The untracked twin of the replicated disk, for the trace-mode overhead:
 * a small ext4 on its own loop device (--direct-io=on, like the replicated
 * one, backed by a file on the same host filesystem), mounted noatime. The
 * workload alternates between a file on the replicated disk and the same
 * size of file here, so "with the agent" and "without" rounds interleave
 * under the same background load while the agent keeps running.
 */
import { mkdirSync, rmdirSync } from "node:fs";
import path from "node:path";
import { out, run } from "./sys.js";

export interface TwinDisk {
  device: string;
  mnt: string;
  /** Unmounts, detaches and deletes the image; never throws. */
  dispose(): void;
}

export function twinDisk(dir: string, sizeMiB: number): TwinDisk {
  mkdirSync(dir, { recursive: true });
  const image = path.join(dir, "twin.img");
  const mnt = path.join(dir, "mnt");
  mkdirSync(mnt, { recursive: true });
  run("fallocate", ["-l", `${sizeMiB}MiB`, image]);
  const device = out("losetup", ["--find", "--show", "--direct-io=on", image]);
  let mounted = false;
  const dispose = (): void => {
    const opts = { allowFail: true, cleanup: true };
    if (mounted) run("umount", [mnt], opts);
    run("losetup", ["-d", device], opts);
    run("rm", ["-f", image], opts);
    try {
      rmdirSync(mnt);
      rmdirSync(dir);
    } catch {
      // Left for the caller's removeTree.
    }
  };
  try {
    // No lazy init: the kernel would otherwise write to the twin in the background during the rounds.
    run("mkfs.ext4", [
      "-q",
      "-F",
      "-b",
      "4096",
      "-E",
      "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
      device,
    ]);
    run("mount", ["-o", "noatime", device, mnt]);
    mounted = true;
  } catch (err) {
    dispose();
    throw err;
  }
  return { device, mnt, dispose };
}
