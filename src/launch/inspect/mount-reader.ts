import { constants, promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import { tooLarge } from "./debugfs-reader.js";
import { type DirEntry, type FsReader, MAX_DIR_ENTRIES, MAX_LINKS, resolveLink } from "./fs-reader.js";
import { runBounded } from "./run-bounded.js";

const TIMEOUT_MS = 60_000;

/**
 * Reads an xfs filesystem through a read-only loop device (limited to
 * the partition with --offset/--sizelimit) mounted read-only, without journal
 * recovery, nosuid, nodev and noexec. Needs root. Paths are resolved one
 * component at a time with lstat, so a symbolic link never leads outside the
 * mount point.
 */
export class MountReader implements FsReader {
  private constructor(
    private readonly mnt: string,
    private readonly loop: string,
    private readonly label: string,
  ) {}

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

  async readFile(p: string, maxBytes: number): Promise<Buffer | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch {
      return null;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) return null;
      if (st.size > maxBytes) throw tooLarge(this.label, p, st.size, maxBytes);
      const buf = Buffer.alloc(st.size);
      let done = 0;
      while (done < st.size) {
        const { bytesRead } = await fh.read(buf, done, st.size - done, done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf.subarray(0, done);
    } finally {
      await fh.close();
    }
  }

  async list(p: string): Promise<DirEntry[] | null> {
    const real = await this.resolve(p);
    if (real === null) return null;
    let names: string[];
    try {
      names = (await fs.readdir(real)).slice(0, MAX_DIR_ENTRIES);
    } catch {
      return null;
    }
    const out: DirEntry[] = [];
    for (const name of names) {
      const st = await fs.lstat(path.join(real, name)).catch(() => null);
      if (!st) continue;
      const kind = st.isFile()
        ? "file"
        : st.isDirectory()
          ? "dir"
          : st.isSymbolicLink()
            ? "symlink"
            : "other";
      out.push({ name, kind, size: st.size });
    }
    return out;
  }

  async close(): Promise<void> {
    await runBounded("umount", [this.mnt], { maxStdout: 4096, timeoutMs: TIMEOUT_MS });
    await runBounded("losetup", ["-d", this.loop], { maxStdout: 4096, timeoutMs: TIMEOUT_MS });
    await fs.rmdir(this.mnt).catch(() => undefined);
  }

  /** The host path of `p` inside the mount, following links only within it; null when absent. */
  private async resolve(p: string): Promise<string | null> {
    let todo = resolveLink("/", p).split("/").filter(Boolean);
    let done: string[] = [];
    let hops = 0;
    while (todo.length > 0) {
      const name = todo.shift()!;
      const here = path.join(this.mnt, ...done, name);
      const st = await fs.lstat(here).catch(() => null);
      if (!st) return null;
      if (st.isSymbolicLink()) {
        if (++hops > MAX_LINKS) return null;
        const target = await fs.readlink(here);
        const joined = resolveLink(`/${[...done, name].join("/")}`, target);
        todo = [...joined.split("/").filter(Boolean), ...todo];
        done = [];
        continue;
      }
      done.push(name);
    }
    return path.join(this.mnt, ...done);
  }
}
