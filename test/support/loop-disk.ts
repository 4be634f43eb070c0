/**
 * Real disks for agent tests: an image file attached to a free loop device
 * (`losetup -f --show`, never a fixed number: other test runs use loop
 * devices too), optionally with a mounted ext4, and a write workload.
 *
 * Cleanup always runs: `cleanup()` is idempotent and registered with the
 * test's `after`, and a process exit handler detaches whatever is still
 * attached (a failing or interrupted test must not leave mounts or loop
 * devices behind).
 */
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, promises as fs, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { TestContext } from "node:test";
import { promisify } from "node:util";
import { prng, randomBuffer } from "./images.js";

const run = promisify(execFile);

export interface LoopDisk {
  /** Temporary directory holding the image and the mount point. */
  dir: string;
  image: string;
  /** /dev/loopN */
  device: string;
  major: number;
  minor: number;
  sizeBytes: number;
  /** Where the ext4 is mounted, or null for a bare device. */
  mountPoint: string | null;
  /** Unmounts (after a thaw, in case a test left it frozen), detaches, removes the files. Idempotent. */
  cleanup(): Promise<void>;
}

export interface LoopDiskOptions {
  sizeMiB?: number;
  /** mkfs.ext4 and mount (default true). */
  ext4?: boolean;
}

const live = new Set<{ device: string; mountPoint: string | null; dir: string }>();
let exitHookInstalled = false;

function cleanupSync(d: { device: string; mountPoint: string | null; dir: string }): void {
  if (d.mountPoint) {
    spawnSync("fsfreeze", ["-u", d.mountPoint], { stdio: "ignore" });
    spawnSync("umount", [d.mountPoint], { stdio: "ignore" });
  }
  spawnSync("losetup", ["-d", d.device], { stdio: "ignore" });
  rmSync(d.dir, { recursive: true, force: true });
}

/** Creates an image, attaches it, and (by default) makes and mounts an ext4 on it. */
export async function createLoopDisk(opts: LoopDiskOptions = {}): Promise<LoopDisk> {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const d of live) cleanupSync(d);
    });
  }
  const sizeBytes = (opts.sizeMiB ?? 64) << 20;
  const dir = mkdtempSync(path.join(os.tmpdir(), "lifeboat-loop-"));
  const image = path.join(dir, "disk.img");
  const entry = { device: "", mountPoint: null as string | null, dir };
  let done = false;
  const cleanup = async (): Promise<void> => {
    if (done) return;
    done = true;
    live.delete(entry);
    if (entry.mountPoint) {
      await run("fsfreeze", ["-u", entry.mountPoint]).catch(() => undefined);
      // Whatever a test mounted below the disk's directory (bind mounts) goes first, deepest first.
      for (const m of mountsUnder(dir)) await umountWithRetry(m);
    }
    if (entry.device) await run("losetup", ["-d", entry.device]).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    const fh = await fs.open(image, "w");
    await fh.truncate(sizeBytes);
    await fh.close();
    entry.device = (await run("losetup", ["-f", "--show", image])).stdout.trim();
    live.add(entry);
    const st = statSync(entry.device);
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((Math.floor(st.rdev / 4096) & 0xfff00) >>> 0);
    if (opts.ext4 ?? true) {
      // No lazy init: a background thread zeroing inode tables after mount would
      // write to the device at times the tests do not control.
      await run("mkfs.ext4", [
        "-q",
        "-F",
        "-b",
        "4096",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        entry.device,
      ]);
      const mnt = path.join(dir, "mnt");
      await fs.mkdir(mnt);
      await run("mount", ["-t", "ext4", entry.device, mnt]);
      entry.mountPoint = mnt;
    }
    return {
      dir,
      image,
      device: entry.device,
      major,
      minor,
      sizeBytes,
      mountPoint: entry.mountPoint,
      cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** createLoopDisk whose cleanup runs after the test, pass or fail. */
export async function loopDiskForTest(t: TestContext, opts: LoopDiskOptions = {}): Promise<LoopDisk> {
  const disk = await createLoopDisk(opts);
  t.after(() => disk.cleanup());
  return disk;
}

function mountsUnder(dir: string): string[] {
  const info = readFileSync("/proc/self/mountinfo", "utf8");
  return info
    .split("\n")
    .map((l) => l.split(" ")[4])
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(dir + "/")))
    .sort((a, b) => b.length - a.length);
}

/** Thaws (a test may have left it frozen) and unmounts `mnt`, retrying while busy, lazily at last. */
export async function unmountForTest(mnt: string): Promise<void> {
  await run("fsfreeze", ["-u", mnt]).catch(() => undefined);
  await umountWithRetry(mnt);
}

async function umountWithRetry(mnt: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    try {
      await run("umount", [mnt]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100)); // busy: a child still has a file open
    }
  }
  await run("umount", ["-l", mnt]).catch(() => undefined);
}

export interface WorkloadOptions {
  seed: number;
  /** Files written whole with fsync (default 6). */
  files?: number;
  fileSize?: number;
  /** 4 KiB overwrites at random places in those files, each fsynced (default 24). */
  overwrites?: number;
  /** Delete one file and run fstrim, so that discards reach the device (default true). */
  trim?: boolean;
}

export interface WorkloadResult {
  files: string[];
  bytesWritten: number;
  /** The file deleted before fstrim, if any. */
  trimmed: string | null;
}

/** A small, durable mixed workload on a mounted loop disk: new files, scattered overwrites, a discard. */
export async function runWorkload(disk: LoopDisk, opts: WorkloadOptions): Promise<WorkloadResult> {
  if (!disk.mountPoint) throw new Error("runWorkload needs a mounted disk");
  const rand = prng(opts.seed);
  const fileSize = opts.fileSize ?? 256 << 10;
  const files: string[] = [];
  let bytesWritten = 0;
  for (let i = 0; i < (opts.files ?? 6); i++) {
    const f = path.join(disk.mountPoint, `w-${opts.seed}-${i}-${randomBytes(3).toString("hex")}`);
    const fh = await fs.open(f, "w");
    await fh.write(randomBuffer(rand, fileSize), 0, fileSize, 0);
    await fh.sync();
    await fh.close();
    files.push(f);
    bytesWritten += fileSize;
  }
  for (let i = 0; i < (opts.overwrites ?? 24); i++) {
    const f = files[Math.floor(rand() * files.length)]!;
    const off = Math.floor((rand() * fileSize) / 4096) * 4096;
    const fh = await fs.open(f, "r+");
    await fh.write(randomBuffer(rand, 4096), 0, 4096, off);
    await fh.sync();
    await fh.close();
    bytesWritten += 4096;
  }
  let trimmed: string | null = null;
  if ((opts.trim ?? true) && files.length > 1) {
    trimmed = files.shift()!;
    await fs.rm(trimmed);
    await run("sync", ["-f", disk.mountPoint]);
    await run("fstrim", [disk.mountPoint]);
  }
  return { files, bytesWritten, trimmed };
}

/** Byte offset on the device of the byte at `fileOffset` in `file` (from `filefrag -v`). */
export async function deviceOffsetOf(file: string, fileOffset: number): Promise<number> {
  const { stdout } = await run("filefrag", ["-v", file]);
  const bs = /blocksize of (\d+)/.exec(stdout) ?? /blocks of (\d+) bytes/.exec(stdout);
  if (!bs) throw new Error(`filefrag: no block size in\n${stdout}`);
  const blockSize = Number(bs[1]);
  const logical = Math.floor(fileOffset / blockSize);
  for (const m of stdout.matchAll(/^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):/gm)) {
    const [l0, l1, p0] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (logical >= l0 && logical <= l1) return (p0 + logical - l0) * blockSize + (fileOffset % blockSize);
  }
  throw new Error(`filefrag: offset ${fileOffset} of ${file} is not mapped\n${stdout}`);
}

/** The device byte ranges holding `file`'s data (from `filefrag -v`). */
export async function deviceExtentsOf(file: string): Promise<{ offset: number; length: number }[]> {
  const { stdout } = await run("filefrag", ["-v", file]);
  const bs = /blocksize of (\d+)/.exec(stdout) ?? /blocks of (\d+) bytes/.exec(stdout);
  if (!bs) throw new Error(`filefrag: no block size in\n${stdout}`);
  const blockSize = Number(bs[1]);
  return [...stdout.matchAll(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/gm)].map((m) => ({
    offset: Number(m[1]) * blockSize,
    length: (Number(m[2]) - Number(m[1]) + 1) * blockSize,
  }));
}
