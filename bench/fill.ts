/**
 * The work done inside the mounted benchmark filesystem: filling the base
 * image and applying the change set. It runs as a child process of
 * make-image (`node dist/bench/fill.js fill|change ...`, JSON on stdout) so
 * that Ctrl-C kills it at once while the parent, which owns the mount and the
 * loop device, survives to unmount and detach. Node cannot run a JS signal
 * handler in the middle of synchronous work, so this is the reliable way.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import {
  copyTreeWithBudget,
  writeDatabases,
  writeDuplicates,
  writeLogs,
  writeRandomFile,
  writeRandomFiles,
  type Written,
} from "./content.js";
import { Rng } from "./rng.js";
import { GiB, MiB, WORK, fmtBytes, log, removeTree, run, unmountAll } from "./sys.js";

const FILL_TARGET = 0.6;
const CHANGE_FRACTION = 0.01;
const WRITE_SIZE = 4096;
/** The new file in the change set: 50 MiB for the default 2 GiB image, scaled for other sizes. */
const NEW_FILE_SHARE = (50 * MiB) / (2 * GiB);

export interface FsUsage {
  type: "ext4";
  blockSize: number;
  blocks: number;
  usedBlocks: number;
  usedPercent: number;
}

export type OsContents = Written & { source: string; note: string; skippedFiles: number };

export interface Contents {
  os: OsContents;
  logs: Written;
  sqlite: Written & { rows: number };
  incompressible: Written;
  duplicates: Written;
}

export interface Changes {
  writes: number;
  writeSize: number;
  bytesWritten: number;
  filesTouched: number;
  fractionOfImageBlocks: number;
  newFile: { path: string; bytes: number };
  /** Share of aligned pieces of each size that differ between base.img and changed.img (added by make-image). */
  differing?: Record<string, number>;
}

export interface FillResult {
  fs: FsUsage;
  contents: Contents;
}

export interface ChangeResult {
  changes: Changes;
  usedPercent: number;
}

const SELF = import.meta.filename;

/** Fills the mounted filesystem in a child process (see the file comment). */
export function fillInChild(mnt: string, seed: string): FillResult {
  return JSON.parse(
    run(process.execPath, [SELF, "fill", mnt, seed], { stderrInherit: true }).stdout,
  ) as FillResult;
}

/** Applies the change set to the mounted filesystem in a child process. */
export function changeInChild(mnt: string, sizeBytes: number, seed: string): ChangeResult {
  const args = [SELF, "change", mnt, seed, String(sizeBytes)];
  return JSON.parse(run(process.execPath, args, { stderrInherit: true }).stdout) as ChangeResult;
}

function fsUsage(mnt: string): FsUsage {
  const s = statfsSync(mnt);
  const usedBlocks = s.blocks - s.bfree;
  return {
    type: "ext4",
    blockSize: s.bsize,
    blocks: s.blocks,
    usedBlocks,
    usedPercent: Math.round((usedBlocks / s.blocks) * 1000) / 10,
  };
}

/**
 * Fills the filesystem to FILL_TARGET of its blocks. The OS tree takes what it
 * needs up to 35% of the budget (a subset on small --quick images); the rest is
 * split 30% logs, 20% SQLite, 30% incompressible, 20% duplicates.
 */
function fillFilesystem(mnt: string, rng: Rng): FillResult {
  const { blocks, blockSize } = fsUsage(mnt);
  const target = FILL_TARGET * blocks * blockSize;
  const listFile = path.join(path.dirname(mnt), "os-files.lst");
  const os = copyOsTree(mnt, Math.floor(0.35 * (target - fsUsed(mnt))), listFile);
  rmSync(listFile, { force: true });
  log(`OS tree: ${fmtBytes(os.bytes)} in ${os.files} files from ${os.source}`);

  const rest = target - fsUsed(mnt);
  const share = (f: number): number => Math.floor(f * rest);
  const logs = writeLogs(mnt, share(0.3), rng.fork("logs"));
  log(`logs: ${fmtBytes(logs.bytes)} in ${logs.files} files`);
  const sqlite = writeDatabases(mnt, share(0.2), rng.fork("sqlite"));
  log(`sqlite: ${fmtBytes(sqlite.bytes)} in ${sqlite.files} databases, ${sqlite.rows} rows`);
  const incompressible = writeRandomFiles(mnt, share(0.3), rng.fork("random"));
  log(`incompressible: ${fmtBytes(incompressible.bytes)} in ${incompressible.files} files`);
  // Top up to the target with copies; fs overhead (extents, directories) makes this land a little short.
  const sources = [...logs.paths, ...sqlite.paths, ...incompressible.paths];
  const duplicates = writeDuplicates(mnt, sources, Math.floor(target - fsUsed(mnt)), rng.fork("dups"));
  log(`duplicates: ${fmtBytes(duplicates.bytes)} in ${duplicates.files} files`);
  run("sync", []);
  return {
    fs: fsUsage(mnt),
    contents: {
      os,
      logs: { bytes: logs.bytes, files: logs.files },
      sqlite: { bytes: sqlite.bytes, files: sqlite.files, rows: sqlite.rows },
      incompressible: { bytes: incompressible.bytes, files: incompressible.files },
      duplicates,
    },
  };
}

function fsUsed(mnt: string): number {
  run("sync", []);
  const s = statfsSync(mnt);
  return (s.blocks - s.bfree) * s.bsize;
}

// ---------------------------------------------------------------------------
// OS tree: debootstrap once into bench/work/os/, fall back to /usr.

const OS_CACHE = path.join(WORK, "os", "bookworm-minbase");
const OS_MARKER = OS_CACHE + ".json";

function copyOsTree(mnt: string, budget: number, listFile: string): OsContents {
  const tree = debootstrapTree();
  if (tree) {
    const w = copyTreeWithBudget(tree.dir, ["."], mnt, budget, listFile);
    const note =
      w.skippedFiles > 0 ? `subset: ${w.skippedFiles} files left out to fit the image` : "complete tree";
    return { ...w, source: `debootstrap --variant=minbase bookworm ${tree.mirror}`, note };
  }
  const msg = "debootstrap could not reach a mirror; falling back to copying /usr into the image";
  log(msg); // stdout carries this process's JSON result; the note also goes into image.json and the report
  const w = copyTreeWithBudget("/", ["usr"], mnt, budget, listFile);
  return { ...w, source: "/usr of the host (fallback)", note: msg };
}

/** The cached debootstrap tree, created on first use; null when debootstrap fails. */
function debootstrapTree(): { dir: string; mirror: string } | null {
  if (existsSync(OS_MARKER) && existsSync(OS_CACHE)) {
    const m = JSON.parse(readFileSync(OS_MARKER, "utf8")) as { mirror: string };
    return { dir: OS_CACHE, mirror: m.mirror };
  }
  // BENCH_DEBIAN_MIRROR: a closer or local mirror (and a way to exercise the /usr fallback).
  const mirror = process.env.BENCH_DEBIAN_MIRROR ?? debianMirror();
  const tmp = OS_CACHE + ".tmp";
  removeTree(tmp);
  removeTree(OS_CACHE);
  mkdirSync(path.dirname(OS_CACHE), { recursive: true });
  log(`debootstrap --variant=minbase bookworm from ${mirror} (once; cached in ${OS_CACHE})`);
  const r = run("debootstrap", ["--variant=minbase", "bookworm", tmp, mirror], { allowFail: true });
  if (r.status !== 0) {
    const why = (r.stderr.trim() || r.stdout.trim()).split("\n").slice(-3).join(" | ");
    log(`debootstrap failed (status ${r.status}): ${why}`);
    removeTree(tmp);
    return null;
  }
  unmountAll(tmp); // debootstrap unmounts /proc and /sys itself on success; make sure
  renameSync(tmp, OS_CACHE);
  writeFileSync(OS_MARKER, JSON.stringify({ mirror, createdAt: new Date().toISOString() }) + "\n");
  return { dir: OS_CACHE, mirror };
}

/** First bookworm (non-security) Debian URI in the APT sources, one-line or deb822 format. */
export function debianMirror(): string {
  const files = ["/etc/apt/sources.list"];
  const d = "/etc/apt/sources.list.d";
  if (existsSync(d)) files.push(...readdirSync(d).map((f) => path.join(d, f)));
  for (const f of files.filter((p) => existsSync(p) && /\.(list|sources)$/.test(p))) {
    const text = readFileSync(f, "utf8");
    for (const block of text.split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/im.exec(block)?.[1];
      const suites = /^Suites:\s*(.+)$/im.exec(block)?.[1]?.split(/\s+/) ?? [];
      if (uris && suites.includes("bookworm") && !uris.includes("security")) return uris;
    }
    for (const line of text.split("\n")) {
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/.exec(line.trim() + " ");
      if (m?.[1] && !m[1].includes("security")) return m[1];
    }
  }
  return "http://deb.debian.org/debian";
}

// ---------------------------------------------------------------------------
// Change set

/** Every regular file of at least one block, in sorted order, with its size. */
function regularFiles(root: string): { file: string; size: number }[] {
  const found: { file: string; size: number }[] = [];
  const visit = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      const st = lstatSync(p);
      if (st.isDirectory() && name !== "lost+found") visit(p);
      else if (st.isFile() && st.size >= WRITE_SIZE) found.push({ file: p, size: st.size });
    }
  };
  visit(root);
  return found;
}

/** What `scatterWrites` did: `writes` distinct 4 KiB blocks of file data overwritten in `filesTouched` files. */
export interface ScatterResult {
  writes: number;
  writeSize: number;
  filesTouched: number;
}

/**
 * Overwrites CHANGE_FRACTION of the image's blocks in place, 4 KiB at a time,
 * at block-aligned offsets drawn uniformly over all file data (so big files get
 * proportionally more writes, as on a real disk), each file fsynced once done.
 */
function scatterWrites(mnt: string, sizeBytes: number, rng: Rng): ScatterResult {
  const files = regularFiles(mnt);
  const cumulative: number[] = [];
  let total = 0;
  for (const f of files) cumulative.push((total += Math.floor(f.size / WRITE_SIZE)));
  const writes = Math.round((CHANGE_FRACTION * sizeBytes) / WRITE_SIZE);
  const chosen = new Map<number, Set<number>>(); // file index -> block numbers
  for (let n = 0; n < writes;) {
    const block = rng.int(total);
    const fi = upperBound(cumulative, block);
    const inFile = block - (fi === 0 ? 0 : (cumulative[fi - 1] ?? 0));
    const set = chosen.get(fi) ?? new Set<number>();
    if (set.has(inFile)) continue; // distinct blocks, so the change is exactly `writes` blocks of data
    set.add(inFile);
    chosen.set(fi, set);
    n++;
  }
  for (const [fi, blocks] of [...chosen.entries()].sort((a, b) => a[0] - b[0])) {
    const f = files[fi];
    if (f)
      overwriteBlocks(
        f.file,
        [...blocks].sort((a, b) => a - b),
        rng,
      );
  }
  return { writes, writeSize: WRITE_SIZE, filesTouched: chosen.size };
}

/** The change set: the scattered writes, then one new file. */
function applyChanges(mnt: string, sizeBytes: number, rng: Rng): ChangeResult {
  const { writes, filesTouched } = scatterWrites(mnt, sizeBytes, rng);
  const newFile = path.join(mnt, "srv", "incoming", "upload-new.bin");
  mkdirSync(path.dirname(newFile), { recursive: true });
  const newBytes = Math.round((NEW_FILE_SHARE * sizeBytes) / MiB) * MiB;
  writeRandomFile(newFile, newBytes, rng.fork("new-file"));
  log(`changes: ${writes} x 4 KiB writes in ${filesTouched} files, new file of ${fmtBytes(newBytes)}`);
  return {
    changes: {
      writes,
      writeSize: WRITE_SIZE,
      bytesWritten: writes * WRITE_SIZE,
      filesTouched,
      fractionOfImageBlocks: (writes * WRITE_SIZE) / sizeBytes,
      newFile: { path: path.relative(mnt, newFile), bytes: newBytes },
    },
    usedPercent: fsUsage(mnt).usedPercent,
  };
}

/** Index of the first element greater than `x` (the file that owns data block `x`). */
function upperBound(sorted: readonly number[], x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((sorted[mid] ?? 0) <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function overwriteBlocks(file: string, blocks: readonly number[], rng: Rng): void {
  const fd = openSync(file, "r+");
  try {
    for (const b of blocks) writeSync(fd, rng.bytes(WRITE_SIZE), 0, WRITE_SIZE, b * WRITE_SIZE);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Child process entry point: fill MNT SEED | change MNT SEED SIZE_BYTES | scatter MNT SEED SIZE_BYTES
// (scatter: the change set's scattered writes alone, for the replication benchmark, which runs
// it with `spawn` so that the agent in the parent keeps running while it writes).

/** The arguments of `node dist/bench/fill.js scatter ...`, which prints a ScatterResult. */
export function scatterArgs(mnt: string, sizeBytes: number, seed: string): string[] {
  return [SELF, "scatter", mnt, seed, String(sizeBytes)];
}

function main(argv: string[]): void {
  const [what, mnt, seed, size] = argv;
  if (!mnt || !seed) throw new Error("usage: fill.js fill MNT SEED | change|scatter MNT SEED SIZE_BYTES");
  const rng = new Rng(seed);
  const result =
    what === "fill"
      ? fillFilesystem(mnt, rng.fork("fill"))
      : what === "scatter"
        ? scatterWrites(mnt, Number(size), rng.fork("scatter"))
        : applyChanges(mnt, Number(size), rng.fork("changes"));
  process.stdout.write(JSON.stringify(result) + "\n");
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main(process.argv.slice(2));
