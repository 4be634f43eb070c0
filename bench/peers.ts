/**
 * Timing helpers and the peer tools lifeboat is compared with: restic, borg
 * (default content-defined chunker and fixed 4 MiB chunks, the latter being
 * the closest to lifeboat's fixed-size chunks) and an rsync copy as baseline.
 *
 * Every tool reads the image the way it would read a block device: the disk
 * is fed on stdin under a constant name ("disk0.img"), so the initial and the
 * changed backup are the same logical disk to the tool.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import path from "node:path";
import { WORK, dirBytes, log, prepareCache, run, since, type RunOptions, type RunResult } from "./sys.js";

const TIME = "/usr/bin/time";
/** Name of the disk inside every peer's backup. */
export const DISK_NAME = "disk0.img";

/** `check`: every stored byte read back and checked (restic check --read-data, borg check --verify-data, lifeboat store verify --read-data). */
export type Phase = "initial" | "changed" | "restore" | "check";

export interface StepResult {
  tool: string;
  phase: Phase;
  /** What was run, for the report (no secrets ever appear in argv). */
  command: string;
  seconds: number;
  /** Part of `seconds` spent flushing what the tool left in the page cache. */
  syncSeconds: number;
  /** Image bytes processed per second (for a check, repository bytes), 1 MB = 10^6 bytes. */
  mbPerSec: number;
  peakRssMiB: number;
  /** Repository (or copy) size after the step, `du -sb`. */
  repoBytes: number;
  /** 1-minute load average just before the step. */
  load1: number;
  /** For restores: the output equals changed.img (cmp). */
  verified?: boolean;
  note?: string;
  /** With several rounds: this step's seconds in each round (the step's figures are the median round's). */
  roundSeconds?: number[];
}

export interface Measurement extends RunResult {
  /** Wall time of the command plus the final sync. */
  seconds: number;
  /** The part of `seconds` spent in the final sync. */
  syncSeconds: number;
  peakRssKiB: number;
  /** 1-minute load average just before the step: other work on the machine skews timings. */
  load1: number;
}

/** What a suite needs to know: the images and where its repositories go. */
export interface SuiteContext {
  base: string;
  changed: string;
  imageBytes: number;
  repos: string;
  secrets: Secrets;
}

export function requireTimeBinary(): void {
  if (!existsSync(TIME)) {
    throw new Error(`${TIME} is missing (peak RSS is read from it): apt-get install time`);
  }
}

/**
 * Runs a command under GNU time with a cold page cache (or a warm one, see
 * sys.ts prepareCache). Wall time is taken
 * here with a monotonic clock (time's %e has 10 ms resolution); peak RSS is
 * time's %M, the largest resident set of the command or any child it waited for.
 */
export function timed(cmd: string, args: readonly string[], opts: RunOptions = {}): Measurement {
  const report = path.join(WORK, `.time-${process.pid}.txt`);
  prepareCache();
  const load1 = loadavg()[0] ?? 0;
  const start = performance.now();
  try {
    const r = run(TIME, ["-f", "%e %M", "-o", report, cmd, ...args], opts);
    // The step ends when its output is on disk: without this sync a tool that leaves
    // gigabytes dirty in the page cache (rsync, a restore) would look faster than one that fsyncs.
    const syncStart = performance.now();
    run("sync", []);
    const syncSeconds = since(syncStart);
    const seconds = since(start);
    const lastLine = readFileSync(report, "utf8").trim().split("\n").pop() ?? "";
    const peakRssKiB = Number(lastLine.split(" ")[1] ?? NaN);
    return { ...r, seconds, syncSeconds, peakRssKiB, load1 };
  } finally {
    rmSync(report, { force: true });
  }
}

/** Runs `cmd` with the image file as its stdin. */
export function timedWithInput(
  cmd: string,
  args: readonly string[],
  input: string,
  opts: RunOptions = {},
): Measurement {
  const fd = openSync(input, "r");
  try {
    return timed(cmd, args, { ...opts, stdinFd: fd });
  } finally {
    closeSync(fd);
  }
}

export function step(
  tool: string,
  phase: Phase,
  command: string,
  m: Measurement,
  imageBytes: number,
  repo: string,
  extra: Partial<StepResult> = {},
): StepResult {
  const result: StepResult = {
    tool,
    phase,
    command,
    seconds: round(m.seconds, 2),
    syncSeconds: round(m.syncSeconds, 2),
    mbPerSec: round(imageBytes / 1e6 / m.seconds, 1),
    peakRssMiB: round(m.peakRssKiB / 1024, 1),
    repoBytes: dirBytes(repo),
    load1: round(m.load1, 2),
    ...extra,
  };
  log(
    `${tool} ${phase}: ${result.seconds} s, ${result.mbPerSec} MB/s, ${result.peakRssMiB} MiB RSS, ` +
      `repo ${(result.repoBytes / 1e6).toFixed(1)} MB`,
  );
  return result;
}

export function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** True when two files have identical content. */
export function sameContent(a: string, b: string): boolean {
  return run("cmp", ["-s", a, b], { allowFail: true }).status === 0;
}

// ---------------------------------------------------------------------------
// Secrets: one random passphrase in a 0600 file, handed over by file or env, never argv.

export interface Secrets {
  passwordFile: string;
  passphrase: string;
}

/** The secrets of an earlier makeSecrets in `dir` (to reuse its repositories). */
export function readSecrets(dir: string): Secrets {
  const passwordFile = path.join(dir, "password");
  return { passwordFile, passphrase: readFileSync(passwordFile, "utf8").trim() };
}

export function makeSecrets(dir: string): Secrets {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const passwordFile = path.join(dir, "password");
  const passphrase = randomBytes(24).toString("hex");
  writeFileSync(passwordFile, passphrase + "\n", { mode: 0o600 });
  return { passwordFile, passphrase };
}

// ---------------------------------------------------------------------------
// restic

/** A peer's repository with what its commands need: environment (secrets) and working directory. */
export interface PeerRepo {
  repo: string;
  opts: { env: NodeJS.ProcessEnv; cwd: string };
}

/** restic's repository in `repos`/restic, as its commands reach it (no init). */
export function resticRepo(repos: string, secrets: Secrets): PeerRepo {
  const repo = path.join(repos, "restic");
  const env = {
    ...process.env,
    RESTIC_REPOSITORY: repo,
    RESTIC_PASSWORD_FILE: secrets.passwordFile,
    RESTIC_CACHE_DIR: path.join(repos, "restic-cache"),
  };
  return { repo, opts: { env, cwd: repos } };
}

/** Creates restic's repository in `repos`/restic (format 2: zstd compression, like lifeboat's). */
export function resticInit(repos: string, secrets: Secrets): PeerRepo {
  const r = resticRepo(repos, secrets);
  run("restic", ["init", "--repository-version", "2"], r.opts);
  return r;
}

/** `restic backup` of a disk image fed on stdin. */
export const RESTIC_BACKUP = [
  "backup",
  "--quiet",
  "--host",
  "bench",
  "--stdin",
  "--stdin-filename",
  DISK_NAME,
];
export const RESTIC_BACKUP_CMD = `restic backup --stdin --stdin-filename ${DISK_NAME} < IMG`;

export function resticSuite(ctx: SuiteContext): StepResult[] {
  const { repo, opts } = resticInit(ctx.repos, ctx.secrets);
  const target = path.join(ctx.repos, "restic-restore");
  const backup = RESTIC_BACKUP;
  const cmd = RESTIC_BACKUP_CMD;
  const results = [
    step("restic", "initial", cmd, timedWithInput("restic", backup, ctx.base, opts), ctx.imageBytes, repo),
    step("restic", "changed", cmd, timedWithInput("restic", backup, ctx.changed, opts), ctx.imageBytes, repo),
  ];
  const restored = timed("restic", ["restore", "latest", "--target", target], opts);
  const out = path.join(target, DISK_NAME);
  results.push(
    step("restic", "restore", "restic restore latest --target DIR", restored, ctx.imageBytes, repo, {
      verified: sameContent(out, ctx.changed),
    }),
  );
  rmSync(target, { recursive: true, force: true });
  const checked = timed("restic", ["check", "--read-data"], opts);
  results.push(step("restic", "check", "restic check --read-data", checked, dirBytes(repo), repo));
  return results;
}

// ---------------------------------------------------------------------------
// borg

/** The borg repository named `name` in `repos`, as its commands reach it (no init). */
export function borgRepo(repos: string, secrets: Secrets, name: string): PeerRepo {
  const repo = path.join(repos, name);
  const env = {
    ...process.env,
    BORG_PASSPHRASE: secrets.passphrase,
    // Keys, cache and security dirs stay inside the run, not in root's home.
    BORG_BASE_DIR: path.join(repos, `${name}-home`),
  };
  return { repo, opts: { env, cwd: repos } };
}

/** Creates a borg repository named `name` in `repos` (repokey-blake2, default lz4 compression). */
export function borgInit(repos: string, secrets: Secrets, name: string): PeerRepo {
  const r = borgRepo(repos, secrets, name);
  run("borg", ["init", "--encryption=repokey-blake2", r.repo], r.opts);
  return r;
}

/** `borg create` of a disk image fed on stdin, as archive `archive`; `chunker` as --chunker-params. */
export function borgCreate(repo: string, archive: string, chunker?: string): string[] {
  const params = chunker ? ["--chunker-params", chunker] : [];
  return ["create", ...params, "--stdin-name", DISK_NAME, `${repo}::${archive}`, "-"];
}

export function borgCreateCmd(chunker?: string): string {
  const params = chunker ? ` --chunker-params ${chunker}` : "";
  return `borg create${params} --stdin-name ${DISK_NAME} REPO::ARCHIVE - < IMG`;
}

export function borgSuite(ctx: SuiteContext, variant: { name: string; chunker?: string }): StepResult[] {
  const { repo, opts } = borgInit(ctx.repos, ctx.secrets, variant.name);
  const create = (archive: string): string[] => borgCreate(repo, archive, variant.chunker);
  const cmd = borgCreateCmd(variant.chunker);
  return [
    step(
      variant.name,
      "initial",
      cmd,
      timedWithInput("borg", create("initial"), ctx.base, opts),
      ctx.imageBytes,
      repo,
    ),
    step(
      variant.name,
      "changed",
      cmd,
      timedWithInput("borg", create("changed"), ctx.changed, opts),
      ctx.imageBytes,
      repo,
    ),
    step(
      variant.name,
      "check",
      "borg check --verify-data REPO",
      timed("borg", ["check", "--verify-data", repo], opts),
      dirBytes(repo),
      repo,
    ),
  ];
}

// ---------------------------------------------------------------------------
// rsync: the "just copy it" baseline. The second run uses the delta algorithm
// in place, which is how one would keep a remote copy of a disk image current.

export function rsyncSuite(ctx: SuiteContext): StepResult[] {
  const dir = path.join(ctx.repos, "rsync");
  mkdirSync(dir, { recursive: true });
  const dest = path.join(dir, DISK_NAME);
  const first = timed("rsync", ["--inplace", ctx.base, dest], { cwd: ctx.repos });
  const second = timed("rsync", ["--inplace", "--no-whole-file", ctx.changed, dest], { cwd: ctx.repos });
  return [
    step("rsync", "initial", "rsync --inplace IMG COPY", first, ctx.imageBytes, dir),
    step("rsync", "changed", "rsync --inplace --no-whole-file IMG COPY", second, ctx.imageBytes, dir, {
      verified: sameContent(dest, ctx.changed),
    }),
  ];
}

// ---------------------------------------------------------------------------
// casync: content-defined chunks (64 KiB average by default) in a directory
// store, one file per chunk, like lifeboat's chunk objects. A disk image is a
// "blob": `make` writes a .caibx index of its chunks into the store, `extract`
// writes the blob back. casync reads the file itself (no stdin).

export const CASYNC_STORE = "store";

/** casync's store and indexes in `repos`/casync; `changed.caibx` is the latest "snapshot". */
export function casyncPaths(repos: string): { dir: string; store: string; index(phase: string): string } {
  const dir = path.join(repos, "casync");
  return { dir, store: path.join(dir, CASYNC_STORE), index: (phase) => path.join(dir, `${phase}.caibx`) };
}

/** `casync make` of an image into the store (zstd, the default chunk sizes, sha512-256). */
export function casyncMake(store: string, index: string, image: string): string[] {
  return ["make", `--store=${store}`, "--compression=zstd", index, image];
}
export const CASYNC_MAKE_CMD = "casync make --store=STORE --compression=zstd INDEX.caibx IMG";

/** `casync extract` of an index to a file; no seed (the output does not exist before). */
export function casyncExtract(store: string, index: string, out: string): string[] {
  return ["extract", `--store=${store}`, "--seed-output=no", index, out];
}
export const CASYNC_EXTRACT_CMD = "casync extract --store=STORE --seed-output=no changed.caibx FILE";

export function casyncSuite(ctx: SuiteContext): StepResult[] {
  const c = casyncPaths(ctx.repos);
  mkdirSync(c.store, { recursive: true });
  const opts = { cwd: ctx.repos };
  const results = [
    step(
      "casync",
      "initial",
      CASYNC_MAKE_CMD,
      timed("casync", casyncMake(c.store, c.index("initial"), ctx.base), opts),
      ctx.imageBytes,
      c.dir,
    ),
    step(
      "casync",
      "changed",
      CASYNC_MAKE_CMD,
      timed("casync", casyncMake(c.store, c.index("changed"), ctx.changed), opts),
      ctx.imageBytes,
      c.dir,
    ),
  ];
  const outDir = path.join(ctx.repos, "casync-restore");
  mkdirSync(outDir, { recursive: true });
  const out = path.join(outDir, DISK_NAME);
  const restored = timed("casync", casyncExtract(c.store, c.index("changed"), out), opts);
  results.push(
    step("casync", "restore", CASYNC_EXTRACT_CMD, restored, ctx.imageBytes, c.dir, {
      verified: sameContent(out, ctx.changed),
    }),
  );
  rmSync(outDir, { recursive: true, force: true });
  return results;
}

// ---------------------------------------------------------------------------
// Versions, for the report.

export function toolVersions(): Record<string, string> {
  const first = (cmd: string, args: string[]): string => {
    const r = run(cmd, args, { allowFail: true });
    return r.status === 0 ? (r.stdout.trim().split("\n")[0] ?? "") : "not installed";
  };
  return {
    restic: first("restic", ["version"]),
    borg: first("borg", ["--version"]),
    rsync: first("rsync", ["--version"]),
    casync: first("casync", ["--version"]),
    fio: first("fio", ["--version"]),
    debootstrap: first("dpkg-query", ["-W", "-f", "${Version}", "debootstrap"]),
    e2fsprogs: first("dpkg-query", ["-W", "-f", "${Version}", "e2fsprogs"]),
  };
}
