/**
 * The benchmark, in one run: `npm run bench` builds, then runs this.
 *
 * Sections, in order: the images (cached); store ingest, dedup and restore of
 * lifeboat against restic, borg, borg-fixed4m, casync and an rsync copy on the
 * same images (this process); replication with RPO under load and the
 * trace-mode overhead (replication.js); restore and materialize medians
 * (launch.js, from the peers section's repositories); API load (api.js).
 * Then bench/RESULTS.md (summary.ts) holds every section's figures of this
 * run, the machine and how to reproduce; the detailed per-section reports are
 * bench/results/{latest,replication,launch,api}.md of the same run.
 *
 *   --only lifeboat|peers   the peers section with one side only
 *   --only api              only the API load benchmark (bench/api.ts)
 *   --only replication      only the replication benchmark (bench/replication.ts, with its own peers)
 *   --only launch           only the launch benchmark (bench/launch.ts, with its own repositories)
 *   --size-gib N            image size (default 2)
 *   --quick                 256 MiB image and short workloads, for smoke checks (~4 min)
 *   --keep                  keep bench/work/repos/ (repositories, keys) after the run
 *   --rebuild-image         regenerate the images even if cached
 *   --rounds N              rounds of the peers section's steps, each into fresh repositories (default 3,
 *                           1 with --quick); every figure is the median round's
 *   --warm                  every peers-section step reads its input from the page cache (primed before
 *                           the clock starts) instead of from the disk; measures the tools, not the disk.
 *                           Runs the peers section and the API only, writes warm.{json,md}, no RESULTS.md.
 *
 * Full default runs write bench/RESULTS.md and bench/results/; partial runs
 * (--quick, another size, --only) write bench/work/results/ (RESULTS.md
 * included), so a smoke check never replaces the published figures.
 * Missing tools (restic, borg, rsync, casync, fio, time, debootstrap) are
 * installed with apt-get.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import type { LaunchResults } from "./launch.js";
import { lifeboatReady, lifeboatSuite, type LifeboatOutcome } from "./lifeboat.js";
import { ensureImages, sizeFromArgs } from "./make-image.js";
import {
  borgSuite,
  casyncSuite,
  makeSecrets,
  requireTimeBinary,
  resticSuite,
  rsyncSuite,
  type StepResult,
  type SuiteContext,
} from "./peers.js";
import { METHOD, compare, machineFacts, medianSteps, renderMarkdown, type BenchResults } from "./report.js";
import type { ReplicationResults } from "./replication-report.js";
import { writeSummary } from "./summary.js";
import { ensureTools } from "./tools.js";
import {
  GiB,
  RESULTS,
  ROOT,
  WORK,
  Interrupted,
  log,
  removeTree,
  requireRoot,
  cacheMode,
  setCacheMode,
  since,
  trapInterrupts,
} from "./sys.js";

interface Options {
  only: "lifeboat" | "peers" | "api" | "replication" | "launch" | null;
  sizeBytes: number;
  quick: boolean;
  keep: boolean;
  rebuildImage: boolean;
  warm: boolean;
  /** Rounds of the peers section's steps (fresh repositories each); figures are medians. */
  rounds: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      only: { type: "string" },
      "size-gib": { type: "string" },
      quick: { type: "boolean" },
      keep: { type: "boolean" },
      "rebuild-image": { type: "boolean" },
      warm: { type: "boolean" },
      rounds: { type: "string" },
    },
  });
  const only = values.only ?? null;
  const sections = ["lifeboat", "peers", "api", "replication", "launch"] as const;
  if (only !== null && !(sections as readonly string[]).includes(only)) {
    throw new Error(`--only must be ${sections.join(", ")}; got ${only}`);
  }
  return {
    only: only as Options["only"],
    sizeBytes: sizeFromArgs(values),
    quick: values.quick ?? false,
    keep: values.keep ?? false,
    rebuildImage: values["rebuild-image"] ?? false,
    warm: values.warm ?? false,
    rounds: roundsFromArgs(values.rounds, values.quick ?? false),
  };
}

function roundsFromArgs(value: string | undefined, quick: boolean): number {
  if (value === undefined) return quick ? 1 : 3;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 9) throw new Error(`--rounds must be 1 to 9; got ${value}`);
  return n;
}

/** Runs one suite; a failing peer is reported, not fatal, so the others still get measured. */
function guarded<T>(name: string, notes: string[], fn: () => T): T | null {
  try {
    return fn();
  } catch (err) {
    if (err instanceof Interrupted) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    log(`${name} failed: ${msg}`);
    notes.push(`${name} failed: ${msg.split("\n")[0]}`);
    return null;
  }
}

function runSuites(
  opts: Options,
  ctx: SuiteContext,
  notes: string[],
): { steps: StepResult[]; lifeboat: LifeboatOutcome | null } {
  const steps: StepResult[] = [];
  let lifeboat: LifeboatOutcome | null = null;
  if (opts.only !== "peers") {
    if (lifeboatReady()) {
      lifeboat = guarded("lifeboat", notes, () => lifeboatSuite(ctx));
      if (lifeboat) steps.push(...lifeboat.steps);
    } else {
      notes.push(
        "lifeboat was not measured: `node bin/lifeboat.js store import --help` does not offer --disk yet.",
      );
    }
  }
  if (opts.only !== "lifeboat") {
    const peers: [string, () => StepResult[]][] = [
      ["restic", () => resticSuite(ctx)],
      ["borg", () => borgSuite(ctx, { name: "borg" })],
      ["borg-fixed4m", () => borgSuite(ctx, { name: "borg-fixed4m", chunker: "fixed,4194304" })],
      ["rsync", () => rsyncSuite(ctx)],
      ["casync", () => casyncSuite(ctx)],
    ];
    for (const [name, suite] of peers) steps.push(...(guarded(name, notes, suite) ?? []));
  }
  return { steps, lifeboat };
}

/** The lifeboat settings worth stating, read back from the repository (defaults change as lifeboat evolves). */
function lifeboatMethod(lifeboat: LifeboatOutcome | null): string[] {
  const chunk = lifeboat?.stats.initial.chunkSize;
  return typeof chunk === "number"
    ? [`lifeboat: \`store init\` defaults, ${chunk / 1024} KiB chunks, zstd + AES-GCM.`]
    : [];
}

/** Writes through a temporary file so a crash never leaves half a results file. */
function writeAtomically(file: string, text: string): void {
  writeFileSync(file + ".tmp", text);
  renameSync(file + ".tmp", file);
}

/**
 * Runs another benchmark script of this directory as a child process; Ctrl-C there stops the run.
 * With libuv's pool of 16 threads that the agent and server run with (bin/lifeboat.js, the agent's
 * unit): the replication benchmark hosts the agent in its own process, and a script cannot set it
 * for itself (the pool starts before its first line runs).
 */
function child(
  script: string,
  args: readonly string[],
  what: string,
  env: Record<string, string> = {},
): number {
  const r = spawnSync(process.execPath, [path.join(import.meta.dirname, script), ...args], {
    stdio: "inherit",
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? "16", ...env },
  });
  if (r.signal === "SIGINT" || r.status === 130) throw new Interrupted(what, "SIGINT");
  return r.status ?? 1;
}

function sizeArgs(opts: Options): string[] {
  return opts.quick ? ["--quick"] : ["--size-gib", String(opts.sizeBytes / GiB)];
}

/**
 * The API load benchmark (bench/api.ts). Without LIFEBOAT_TEST_PG_URL it runs on SQLite only;
 * --quick shortens it.
 */
function apiBench(opts: Options, dir: string, notes: string[]): number {
  const args = ["--results-dir", dir];
  if (!process.env.LIFEBOAT_TEST_PG_URL) {
    args.push("--db", "sqlite");
    notes.push("API load: SQLite only (LIFEBOAT_TEST_PG_URL was not set; `. .ci/postgres.sh` sets it).");
  }
  if (opts.quick) args.push("--agents", "200", "--seconds", "10");
  return child("api.js", args, "the API benchmark");
}

/**
 * The replication benchmark (agent and server over loopback TLS, RPO under load, trace-mode
 * overhead): it is asynchronous, so it runs in its own process and writes replication.{json,md}.
 * Inside a full run its peers are left out: the peers section backed up the same image.
 */
function replicationBench(opts: Options, dir: string, peers: boolean): number {
  const args = [...sizeArgs(opts), "--results-dir", dir, ...(peers ? [] : ["--no-peers"])];
  // The agent and the server run with glibc's tunables as the agent's wrapper and the server's unit
  // set them (install.sh, docs/operations.md); CLI commands elsewhere run without them.
  return child("replication.js", [...args, ...(opts.keep ? ["--keep"] : [])], "the replication benchmark", {
    GLIBC_TUNABLES:
      process.env.GLIBC_TUNABLES ?? "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576",
  });
}

/** The launch benchmark (bench/launch.ts): with `repos`, it restores from the peers section's repositories. */
function launchBench(opts: Options, dir: string, repos: string | null): number {
  const args = [...sizeArgs(opts), "--results-dir", dir, ...(repos ? ["--repos", repos] : [])];
  return child("launch.js", [...args, ...(opts.keep ? ["--keep"] : [])], "the launch benchmark");
}

/** A section's JSON from this run (written after `since`), or null. */
function readFresh<T extends { generatedAt: string }>(file: string, since: Date): T | null {
  if (!existsSync(file)) return null;
  const r = JSON.parse(readFileSync(file, "utf8")) as T;
  return new Date(r.generatedAt) >= since ? r : null;
}

/** The peers section: lifeboat's store and the peers on the same images, in this process. */
function peersSection(
  opts: Options,
  images: ReturnType<typeof ensureImages>,
  ctx: SuiteContext,
  dir: string,
  start: number,
): { results: BenchResults; failed: boolean } {
  // Warm: both images and every repository are read into the page cache before each step.
  setCacheMode(opts.warm ? "warm" : "cold", [images.base, images.changed, ctx.repos]);
  const notes: string[] = [];
  if (images.description.contents.os.source.includes("fallback"))
    notes.push(images.description.contents.os.note);
  // Rounds before the last run in repositories of their own, removed after; the last one's stay
  // (the launch section restores from them).
  const rounds: StepResult[][] = [];
  let outcome = { steps: [] as StepResult[], lifeboat: null as LifeboatOutcome | null };
  for (let r = 1; r <= opts.rounds; r++) {
    const last = r === opts.rounds;
    const repos = last ? ctx.repos : path.join(WORK, `repos-round${r}`);
    if (!last) {
      removeTree(repos);
      mkdirSync(repos, { recursive: true });
    }
    try {
      if (opts.rounds > 1) log(`peers section, round ${r} of ${opts.rounds}`);
      const secrets = last ? ctx.secrets : makeSecrets(path.join(repos, "secrets"));
      outcome = runSuites(opts, { ...ctx, repos, secrets }, notes);
      rounds.push(outcome.steps);
    } finally {
      if (!last) removeTree(repos);
    }
  }
  outcome = { ...outcome, steps: medianSteps(rounds) };
  const results: BenchResults = {
    generatedAt: new Date().toISOString(),
    options: { sizeBytes: opts.sizeBytes, only: opts.only, quick: opts.quick, cache: cacheMode() },
    method: [
      ...(opts.warm
        ? [
            "Warm cache: before every timed step both images and every repository are read whole into the page cache (nothing is dropped), so reads come from memory and the step measures the tool, not the disk.",
            ...METHOD.filter((m) => !m.includes("drop_caches")),
          ]
        : METHOD),
      ...lifeboatMethod(outcome.lifeboat),
    ],
    machine: machineFacts(),
    image: images.description,
    imageGeneratedThisRun: images.fresh,
    runSeconds: Math.round(since(start)),
    steps: outcome.steps,
    comparisons: compare(outcome.steps),
    lifeboatStats: outcome.lifeboat?.stats ?? null,
    notes,
  };
  mkdirSync(dir, { recursive: true });
  const markdown = renderMarkdown(results);
  const base = opts.warm ? "warm" : "latest";
  writeAtomically(path.join(dir, `${base}.json`), JSON.stringify(results, null, 2) + "\n");
  writeAtomically(path.join(dir, `${base}.md`), markdown);
  log(`peers section written to ${path.relative(process.cwd(), dir) || dir}/${base}.{json,md}`);
  const failed = notes.some((n) => n.includes("failed")) || outcome.steps.some((s) => s.verified === false);
  return { results, failed };
}

function main(): number {
  const opts = parseOptions();
  const startedAt = new Date();
  const start = performance.now();
  // Full default runs publish to bench/results/ and bench/RESULTS.md; anything else to bench/work/results/.
  const partial = opts.only !== null || opts.sizeBytes !== 2 * GiB;
  const dir = partial ? path.join(WORK, "results") : RESULTS;
  mkdirSync(dir, { recursive: true });
  const notes: string[] = [];
  if (opts.only === "api") return apiBench(opts, dir, notes);
  requireRoot("The benchmark");
  trapInterrupts();
  if (opts.only === "launch") {
    ensureTools(["restic", "borg", "casync", "/usr/bin/time"]);
    return launchBench(opts, dir, null);
  }
  if (opts.only === "replication") {
    ensureTools(["restic", "borg", "rsync", "fio", "/usr/bin/time"]);
    return replicationBench(opts, dir, true);
  }
  ensureTools();
  requireTimeBinary();

  const sectionSeconds: Record<string, number> = {};
  const timedSection = <T>(name: string, fn: () => T): T => {
    const t = performance.now();
    try {
      return fn();
    } finally {
      sectionSeconds[name] = Math.round(since(t));
    }
  };
  const images = timedSection("images", () => ensureImages(opts.sizeBytes, { rebuild: opts.rebuildImage }));
  const repos = path.join(WORK, "repos");
  removeTree(repos);
  mkdirSync(repos, { recursive: true });
  const ctx: SuiteContext = {
    base: images.base,
    changed: images.changed,
    imageBytes: opts.sizeBytes,
    repos,
    secrets: makeSecrets(path.join(repos, "secrets")),
  };
  const all = opts.only === null && !opts.warm;
  const failures: string[] = [];
  const check = (section: string, status: number): void => {
    if (status !== 0) failures.push(section);
  };
  try {
    const peers = timedSection("store ingest and peers", () => peersSection(opts, images, ctx, dir, start));
    check("store ingest and peers (a tool failed or a restore differed)", peers.failed ? 1 : 0);
    if (all) {
      check(
        "replication",
        timedSection("replication, RPO, trace overhead", () => replicationBench(opts, dir, false)),
      );
      // After replication: the launch restores from the peers section's repositories, then they go.
      check(
        "launch (a restore failed or differed)",
        timedSection("launch", () => launchBench(opts, dir, repos)),
      );
    }
  } finally {
    if (opts.keep) log(`repositories kept in ${repos}`);
    else removeTree(repos);
  }
  if (opts.only === null)
    check(
      "API load (requests failed)",
      timedSection("API load", () => apiBench(opts, dir, notes)),
    );
  const failed = failures.length > 0;
  if (opts.warm) return failed ? 1 : 0;

  const file = partial ? path.join(dir, "RESULTS.md") : path.join(ROOT, "bench", "RESULTS.md");
  const apiFile = path.join(dir, "api.md");
  const markdown = writeSummary(file, {
    generatedAt: new Date().toISOString(),
    command: ["npm run bench", ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : [])].join(
      " ",
    ),
    runSeconds: Math.round(since(start)),
    sectionSeconds,
    machine: machineFacts(),
    peers: readFresh<BenchResults>(path.join(dir, "latest.json"), startedAt),
    replication: readFresh<ReplicationResults>(path.join(dir, "replication.json"), startedAt),
    launch: readFresh<LaunchResults>(path.join(dir, "launch.json"), startedAt),
    detailsDir: path.relative(ROOT, dir),
    apiMarkdown:
      opts.only === null && existsSync(apiFile) && statSync(apiFile).mtime >= startedAt
        ? readFileSync(apiFile, "utf8")
        : null,
    notes: [...notes, ...failures.map((f) => `Section failed: ${f}; see its report and the log of the run.`)],
  });
  console.log(markdown);
  log(`results written to ${path.relative(process.cwd(), file)} (run: ${Math.round(since(start))} s)`);
  return failed ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (err) {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = err instanceof Interrupted ? 130 : 1;
}
