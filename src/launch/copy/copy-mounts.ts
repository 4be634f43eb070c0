import { existsSync, promises as fs, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";
import { CopyTree } from "./copy-tree.js";
import { runTool } from "./run-tool.js";

const TOOL_TIMEOUT_MS = 120_000;

/** One filesystem of the copy to mount: where it lives in which image, and where it goes in the installed system. */
export interface CopyFilesystem {
  image: string;
  disk: number;
  partition?: number | undefined;
  offset: number;
  size: number;
  type: string;
  /** "/" for the root; else the fstab mount point. */
  mountPoint: string;
}

/** LAUNCH_COPY_NEEDS_ROOT unless this process can attach loop devices. */
export function assertCanMount(): void {
  if (process.getuid?.() !== 0)
    throw new LifeboatError(
      "LAUNCH_COPY_NEEDS_ROOT",
      "preparing a launched copy mounts its filesystems through loop devices, which needs root",
      { hint: "run the launch (lifeboat server, or the launch command) as root" },
    );
  if (!existsSync("/dev/loop-control"))
    throw new LifeboatError(
      "LAUNCH_COPY_NEEDS_ROOT",
      "this host has no loop devices (/dev/loop-control is missing)",
      {
        hint: "load the loop module (modprobe loop); in a container, give it access to /dev/loop-control and /dev/loopN",
      },
    );
}

/** Mount points under `dir` in this process's mount namespace, deepest first. */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string) =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((m): m is string => m !== undefined)
    .map(unescape)
    .filter((m) => m === dir || m.startsWith(dir + "/"))
    .sort((a, b) => b.length - a.length);
}

/**
 * The filesystems of a launched copy mounted read-write under a private
 * temporary directory, each through a loop device limited to its partition
 * (--offset, --sizelimit). `close()` unmounts everything under that directory
 * (what was mounted here, and any bind mount added for a chroot), detaches
 * the loop devices and removes the directory; it runs in a `finally`, after
 * errors and aborts too.
 */
export class CopyMounts {
  readonly tree: CopyTree;
  private readonly loops: string[] = [];

  private constructor(
    readonly dir: string,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.tree = new CopyTree(path.join(dir, "root"));
  }

  static async create(parent: string | undefined, signal: AbortSignal | undefined): Promise<CopyMounts> {
    const dir = await fs.mkdtemp(path.join(parent ?? os.tmpdir(), "lifeboat-copy-"));
    await fs.mkdir(path.join(dir, "root"), { mode: 0o700 });
    return new CopyMounts(dir, signal);
  }

  /** Mounts the root filesystem (first) or one below it; false (and nothing mounted) when its mount point is missing in the copy. */
  async mount(f: CopyFilesystem): Promise<boolean> {
    this.signal?.throwIfAborted();
    const target = f.mountPoint === "/" ? this.tree.root : await this.tree.resolve(f.mountPoint);
    if (target === null || !(await fs.lstat(target)).isDirectory()) return false;
    const loop = await this.attach(f);
    const options = ["rw", "nosuid", "nodev", ...(f.type === "xfs" ? ["nouuid"] : [])];
    const m = await runTool("mount", ["-t", f.type, "-o", options.join(","), loop, target], {
      timeoutMs: TOOL_TIMEOUT_MS,
      signal: this.signal,
    });
    this.signal?.throwIfAborted();
    if (m.code !== 0)
      throw new LifeboatError(
        "LAUNCH_COPY_MOUNT_FAILED",
        `cannot mount ${describe(f)} of the copy read-write at ${f.mountPoint}: ${m.tail || `exit ${m.code}`}`,
        {
          hint: "the filesystem may be damaged (check it with fsck -n on the image) or this host lacks its driver; the repository is not affected",
        },
      );
    return true;
  }

  /** Bind-mounts a directory of this host (/proc, /sys, /dev) over the same path in the copy, for a chroot. */
  async bind(hostDir: string): Promise<void> {
    this.signal?.throwIfAborted();
    const target = await this.tree.resolve(hostDir);
    if (target === null || !(await fs.lstat(target)).isDirectory())
      throw new Error(`the copy has no directory ${hostDir} to bind-mount ${hostDir} on`);
    const m = await runTool("mount", ["--bind", hostDir, target], { timeoutMs: TOOL_TIMEOUT_MS });
    if (m.code !== 0) throw new Error(`cannot bind-mount ${hostDir} into the copy: ${m.tail}`);
  }

  /** Unmounts whatever is mounted at `p` of the copy and below it. */
  async unmountBelow(p: string): Promise<void> {
    const target = await this.tree.resolve(p);
    if (target !== null) for (const m of mountsUnder(target)) await unmount(m);
  }

  /** Unmounts everything under the private directory, detaches the loop devices, removes the directory. Never throws. */
  async close(): Promise<string[]> {
    const problems: string[] = [];
    for (const m of mountsUnder(this.dir)) {
      const err = await unmount(m);
      if (err) problems.push(err);
    }
    for (const loop of this.loops.splice(0)) {
      const r = await runTool("losetup", ["-d", loop], { timeoutMs: TOOL_TIMEOUT_MS });
      if (r.code !== 0) problems.push(`cannot detach ${loop}: ${r.tail}`);
    }
    // rmdir, never a recursive removal: if anything were still mounted, its files must not go.
    await fs.rmdir(this.tree.root).catch(() => undefined);
    await fs
      .rmdir(this.dir)
      .catch((err: Error) => problems.push(`cannot remove ${this.dir}: ${err.message}`));
    return problems;
  }

  private async attach(f: CopyFilesystem): Promise<string> {
    const r = await runTool(
      "losetup",
      ["--find", "--show", "--offset", String(f.offset), "--sizelimit", String(f.size), f.image],
      { timeoutMs: TOOL_TIMEOUT_MS, signal: this.signal },
    );
    const loop = r.tail.split("\n").find((l) => l.startsWith("/dev/loop"));
    if (r.code === 0 && loop) this.loops.push(loop.trim());
    this.signal?.throwIfAborted();
    if (r.code !== 0 || !loop)
      throw new LifeboatError(
        "LAUNCH_COPY_NEEDS_ROOT",
        `cannot attach a loop device for ${describe(f)}: ${r.tail}`,
        {
          hint: "run as root on a host with loop devices (modprobe loop), and check that they are not all in use (losetup -a)",
        },
      );
    return loop.trim();
  }
}

function describe(f: CopyFilesystem): string {
  const where = f.partition === undefined ? "" : ` partition ${f.partition}`;
  return `the ${f.type} filesystem on disk ${f.disk}${where} (${f.image})`;
}

/** umount, retried while busy, lazily as a last resort; the problem, if any. */
async function unmount(m: string): Promise<string | null> {
  let last = "";
  for (let i = 0; i < 20; i++) {
    const r = await runTool("umount", [m], { timeoutMs: TOOL_TIMEOUT_MS });
    if (r.code === 0 || !mountsUnder(m).includes(m)) return null;
    last = r.tail;
    await new Promise((res) => setTimeout(res, 100));
  }
  const lazy = await runTool("umount", ["-l", m], { timeoutMs: TOOL_TIMEOUT_MS });
  return lazy.code === 0 ? `${m} was busy (${last}); unmounted lazily` : `cannot unmount ${m}: ${last}`;
}
