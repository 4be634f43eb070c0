import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import { DirectoryReader } from "./directory-reader.js";
import { runBounded } from "./run-bounded.js";

const TIMEOUT_MS = 60_000;

/**
 * Reads an xfs filesystem through a read-only loop device (limited to
 * the partition with --offset/--sizelimit) mounted read-only, without journal
 * recovery, nosuid, nodev and noexec. Needs root. Paths are resolved one
 * component at a time with lstat, so a symbolic link never leads outside the
 * mount point.
 */
export class MountReader extends DirectoryReader {
  private constructor(
    private readonly mnt: string,
    private readonly loop: string,
    label: string,
  ) {
    super(mnt, label);
  }

  static async open(
    imagePath: string,
    fs0: { type: string; offset: number; size: number },
    label: string,
  ): Promise<MountReader> {
    if (process.getuid?.() !== 0)
      throw new LifeboatError(
        "LAUNCH_FS_UNREADABLE",
        `cannot read ${label} (${fs0.type}): reading it needs a loop mount, which needs root`,
        {
          hint: "run lifeboat inspect as root to read xfs filesystems",
        },
      );
    const att = await runBounded(
      "losetup",
      ["-f", "--show", "-r", "-o", String(fs0.offset), "--sizelimit", String(fs0.size), imagePath],
      { maxStdout: 4096, timeoutMs: TIMEOUT_MS },
    );
    const loop = att.stdout.toString().trim();
    if (att.code !== 0 || !loop.startsWith("/dev/"))
      throw new LifeboatError(
        "LAUNCH_FS_UNREADABLE",
        `cannot attach a loop device for ${label}: ${att.stderr.trim()}`,
        {
          hint: "check that loop devices are available (modprobe loop) and not all in use",
        },
      );
    const mnt = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-inspect-"));
    const options = [
      "ro",
      "nosuid",
      "nodev",
      "noexec",
      ...(fs0.type === "xfs" ? ["norecovery", "nouuid"] : []),
    ];
    const m = await runBounded("mount", ["-t", fs0.type, "-o", options.join(","), loop, mnt], {
      maxStdout: 4096,
      timeoutMs: TIMEOUT_MS,
    });
    if (m.code !== 0) {
      await runBounded("losetup", ["-d", loop], { maxStdout: 4096, timeoutMs: TIMEOUT_MS });
      await fs.rmdir(mnt);
      throw new LifeboatError(
        "LAUNCH_FS_UNREADABLE",
        `cannot mount ${label} (${fs0.type}) read-only: ${m.stderr.trim()}`,
        {
          hint: "the filesystem may be damaged, or this host's kernel lacks its driver",
        },
      );
    }
    return new MountReader(mnt, loop, label);
  }

  override async close(): Promise<void> {
    await runBounded("umount", [this.mnt], { maxStdout: 4096, timeoutMs: TIMEOUT_MS });
    await runBounded("losetup", ["-d", this.loop], { maxStdout: 4096, timeoutMs: TIMEOUT_MS });
    await fs.rmdir(this.mnt).catch(() => undefined);
  }
}
