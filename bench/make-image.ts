/**
 * Builds the benchmark disk images, once, and caches them:
 *
 *   base.img     a fully allocated raw ext4 image filled to ~60% with an OS
 *                tree, logs, SQLite databases, incompressible and duplicated files
 *   changed.img  base.img after scattered 4 KiB in-place writes over ~1% of its
 *                blocks plus one new file (the "next day" of the same disk)
 *   image.json   what was written, sizes and used space
 *
 * The default 2 GiB image lives in bench/work/; other sizes (--quick) live in
 * bench/work/img-<N>MiB/. A cached set is reused when image.json exists with
 * the same generator version and size; image.json is written last, so its
 * presence means both images are complete.
 *
 * Standalone: node dist/bench/make-image.js [--size-gib N | --quick] [--rebuild]
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  rmdirSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { changeInChild, fillInChild, type Changes, type Contents, type FsUsage } from "./fill.js";
import {
  GiB,
  Interrupted,
  MiB,
  ROOT,
  WORK,
  allocatedBytes,
  detachLoops,
  fmtBytes,
  log,
  out,
  requireRoot,
  run,
  since,
  trapInterrupts,
  unmountAll,
} from "./sys.js";

/** Bump when anything changes what ends up in the images; cached images are then rebuilt. */
// v2: image.json paths relative to the repository root; v3: directories count in the OS tree budget.
export const GENERATOR_VERSION = 3;
const SEED = "lifeboat-bench-v1";
const DEFAULT_SIZE = 2 * GiB;

export interface ImageDescription {
  generatorVersion: number;
  seed: string;
  sizeBytes: number;
  createdAt: string;
  generationSeconds: number;
  filesystem: FsUsage;
  base: { path: string; allocatedBytes: number };
  changed: { path: string; allocatedBytes: number; usedPercent: number };
  contents: Contents;
  changes: Changes;
}

/** Granularities to compare at: a block, lifeboat's default chunk, restic/borg average chunks, borg-fixed4m. */
const PIECES = { "4KiB": 4096, "64KiB": 64 * 1024, "1MiB": MiB, "4MiB": 4 * MiB } as const;
type PieceName = keyof typeof PIECES;

export interface ImageSet {
  dir: string;
  base: string;
  changed: string;
  descriptionPath: string;
  description: ImageDescription;
  /** Built by this call rather than reused from the cache. */
  fresh: boolean;
}

export function imageDir(sizeBytes: number): string {
  return sizeBytes === DEFAULT_SIZE ? WORK : path.join(WORK, `img-${Math.round(sizeBytes / MiB)}MiB`);
}

/** Returns the cached images for this size, building them first if needed. */
export function ensureImages(sizeBytes: number, opts: { rebuild?: boolean } = {}): ImageSet {
  const dir = imageDir(sizeBytes);
  const set = {
    dir,
    base: path.join(dir, "base.img"),
    changed: path.join(dir, "changed.img"),
    descriptionPath: path.join(dir, "image.json"),
  };
  const cached = opts.rebuild ? null : readCached(set.descriptionPath, set, sizeBytes);
  if (cached) {
    log(`reusing ${set.base} and ${set.changed} (generator v${GENERATOR_VERSION})`);
    return { ...set, description: cached, fresh: false };
  }
  mkdirSync(dir, { recursive: true });
  rmSync(set.descriptionPath, { force: true });
  const description = buildImages(set.base, set.changed, sizeBytes);
  description.changes.differing = differingPieces(set.base, set.changed);
  writeFileSync(set.descriptionPath, JSON.stringify(description, null, 2) + "\n");
  return { ...set, description, fresh: true };
}

/**
 * How much of the image the change set really touched, at the granularities
 * deduplication works with. Scattered 4 KiB writes over 1% of the blocks land
 * in most 1 MiB and 4 MiB pieces, which explains why tools with chunks that
 * large store nearly a full copy for the "changed" step.
 */
function differingPieces(a: string, b: string): Record<PieceName, number> {
  const big = PIECES["4MiB"];
  const bufA = Buffer.alloc(big);
  const bufB = Buffer.alloc(big);
  const differ = Object.fromEntries(Object.keys(PIECES).map((k) => [k, 0])) as Record<PieceName, number>;
  const total = { ...differ };
  const fa = openSync(a, "r");
  const fb = openSync(b, "r");
  try {
    for (let off = 0; ; off += big) {
      const n = readSync(fa, bufA, 0, big, off);
      if (n === 0) break;
      readSync(fb, bufB, 0, n, off);
      for (const [name, size] of Object.entries(PIECES) as [PieceName, number][]) {
        for (let p = 0; p < n; p += size) {
          const end = Math.min(p + size, n);
          total[name]++;
          if (!bufA.subarray(p, end).equals(bufB.subarray(p, end))) differ[name]++;
        }
      }
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  const share = (k: PieceName): number => Math.round((differ[k] / total[k]) * 10000) / 10000;
  return Object.fromEntries(Object.keys(PIECES).map((k) => [k, share(k as PieceName)])) as Record<
    PieceName,
    number
  >;
}

function readCached(
  descriptionPath: string,
  set: { base: string; changed: string },
  sizeBytes: number,
): ImageDescription | null {
  if (!existsSync(descriptionPath)) return null;
  try {
    const d = JSON.parse(readFileSync(descriptionPath, "utf8")) as ImageDescription;
    const sized = (p: string): boolean => existsSync(p) && statSync(p).size === sizeBytes;
    if (
      d.generatorVersion === GENERATOR_VERSION &&
      d.sizeBytes === sizeBytes &&
      sized(set.base) &&
      sized(set.changed)
    ) {
      return d;
    }
  } catch {
    // Unreadable description: rebuild.
  }
  return null;
}

function buildImages(basePath: string, changedPath: string, sizeBytes: number): ImageDescription {
  const start = performance.now();
  const baseTmp = basePath + ".tmp";
  const changedTmp = changedPath + ".tmp";
  for (const f of [basePath, changedPath, baseTmp, changedTmp]) {
    cleanupStale(f);
    rmSync(f, { force: true });
  }

  log(`building ${fmtBytes(sizeBytes)} base image`);
  allocate(baseTmp, sizeBytes);
  const fill = withMountedImage(baseTmp, { mkfs: true }, (mnt) => fillInChild(mnt, SEED));
  log(`base image: ${fill.fs.usedPercent.toFixed(1)}% used`);

  log("building changed image (copy of base + ~1% scattered writes + a new file)");
  run("cp", ["--sparse=never", baseTmp, changedTmp]);
  const change = withMountedImage(changedTmp, { mkfs: false }, (mnt) => changeInChild(mnt, sizeBytes, SEED));

  renameSync(baseTmp, basePath);
  renameSync(changedTmp, changedPath);
  const seconds = since(start);
  log(`images ready in ${seconds.toFixed(0)} s`);
  return {
    generatorVersion: GENERATOR_VERSION,
    seed: SEED,
    sizeBytes,
    createdAt: new Date().toISOString(),
    generationSeconds: Math.round(seconds),
    filesystem: fill.fs,
    base: { path: path.relative(ROOT, basePath), allocatedBytes: allocatedBytes(basePath) },
    changed: {
      path: path.relative(ROOT, changedPath),
      allocatedBytes: allocatedBytes(changedPath),
      usedPercent: change.usedPercent,
    },
    contents: fill.contents,
    changes: change.changes,
  };
}

/** Undoes what an interrupted earlier run may have left: a mount and a loop device on this file. */
function cleanupStale(file: string): void {
  unmountAll(mountPointFor(file));
  detachLoops(file);
}

function mountPointFor(file: string): string {
  return path.join(path.dirname(file), "mnt-" + path.basename(file).replace(/\W/g, "_"));
}

/**
 * Allocates every block of the file, like a real block device: a sparse image
 * would let tools that detect holes skip most of it and flatter them.
 */
function allocate(file: string, sizeBytes: number): void {
  if (run("fallocate", ["-l", String(sizeBytes), file], { allowFail: true }).status === 0) return;
  log("fallocate refused; writing zeros instead");
  const fd = openSync(file, "w");
  try {
    const zeros = Buffer.alloc(8 * MiB);
    for (let done = 0; done < sizeBytes;)
      done += writeSync(fd, zeros, 0, Math.min(zeros.length, sizeBytes - done));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Attaches the file to a loop device, optionally makes the filesystem, mounts
 * it, runs `fn`, and always unmounts and detaches, also when `fn` throws.
 */
function withMountedImage<T>(file: string, opts: { mkfs: boolean }, fn: (mnt: string) => T): T {
  const mnt = mountPointFor(file);
  mkdirSync(mnt, { recursive: true });
  const dev = out("losetup", ["--find", "--show", file]);
  try {
    if (opts.mkfs) mkfs(dev);
    // noatime: reading files while building must not dirty inodes we did not mean to change.
    run("mount", ["-o", "noatime", dev, mnt]);
    try {
      return fn(mnt);
    } finally {
      run("sync", [], { cleanup: true });
      unmountAll(mnt);
    }
  } finally {
    run("losetup", ["-d", dev], { allowFail: true, cleanup: true });
    // rmdir, not rm -r: if the unmount failed, the image's files must not be deleted through it.
    rmdirSync(mnt);
  }
}

function mkfs(dev: string): void {
  run("mkfs.ext4", [
    "-q",
    "-F",
    // 4 KiB blocks at every size: mke2fs would pick 1 KiB for small (--quick) images.
    "-b",
    "4096",
    "-L",
    "lifeboat-bench",
    // A fixed UUID keeps the superblock the same from build to build.
    "-U",
    "6c1f0e2a-4b1d-4d8e-9a57-3c2b1f0e9d11",
    // nodiscard: discarding a loop device punches holes in the image file, making it sparse.
    // lazy init off: otherwise the kernel zeroes inode tables in the background after mount,
    // writing to the image while we measure it.
    "-E",
    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
    dev,
  ]);
}

// ---------------------------------------------------------------------------
// Standalone entry point

export function sizeFromArgs(values: { "size-gib"?: string; quick?: boolean }): number {
  if (values.quick) return 256 * MiB;
  const gib = Number(values["size-gib"] ?? 2);
  if (!(gib > 0 && gib <= 64))
    throw new Error(`--size-gib must be a number between 0 and 64, got ${values["size-gib"]}`);
  return Math.round(gib * 1024) * MiB;
}

function main(): void {
  const { values } = parseArgs({
    options: { "size-gib": { type: "string" }, quick: { type: "boolean" }, rebuild: { type: "boolean" } },
  });
  requireRoot("make-image");
  trapInterrupts();
  const set = ensureImages(sizeFromArgs(values), { rebuild: values.rebuild ?? false });
  console.log(JSON.stringify(set.description, null, 2));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    main();
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = err instanceof Interrupted ? 130 : 1;
  }
}
