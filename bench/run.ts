/**
 * The benchmark: lifeboat against restic, borg and an rsync copy on the same
 * images, in one run. `npm run bench` builds, then runs this.
 *
 *   --only lifeboat|peers   run one side only
 *   --only api              only the API load benchmark (bench/api.ts; a full run ends with it)
 *   --only replication      only the replication benchmark (bench/replication.ts; a full run includes it)
 *   --only launch           only the launch benchmark: materializing a PIT vs restic restore and
 *                           borg extract (bench/launch.ts; a full run includes it)
 *   --size-gib N            image size (default 2)
 *   --quick                 256 MiB image, for smoke checks
 *   --keep                  keep bench/work/repos/ (repositories, keys) after the run
 *   --rebuild-image         regenerate the images even if cached
 *   --warm                  every step reads its input from the page cache (primed before the
 *                           clock starts) instead of from the disk; measures the tools, not the disk
 *
 * Full default runs write bench/results/latest.{json,md} (committed), full
 * --warm runs bench/results/warm.{json,md}; partial runs (--quick, another
 * size, --only) write bench/work/results/ instead, so a smoke check never
 * replaces the published figures.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { lifeboatReady, lifeboatSuite, type LifeboatOutcome } from "./lifeboat.js";
import { ensureImages, sizeFromArgs } from "./make-image.js";
import {
  borgSuite,
  makeSecrets,
  requireTimeBinary,
  resticSuite,
  rsyncSuite,
  type StepResult,
  type SuiteContext,
} from "./peers.js";
import { METHOD, compare, machineFacts, renderMarkdown, type BenchResults } from "./report.js";
import {
  GiB,
  RESULTS,
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
  };
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

/** The API load benchmark, in its own process (it is asynchronous; this file is not). */
function apiBench(): number {
  return (
    spawnSync(process.execPath, [path.join(import.meta.dirname, "api.js")], { stdio: "inherit" }).status ?? 1
  );
}

/**
 * The replication benchmark (agent and server over loopback TLS, with peers on the same disk), in
 * its own process: it is asynchronous, and it writes its own results (replication.{json,md}).
 */
function replicationBench(opts: Options): number {
  const args = [
    path.join(import.meta.dirname, "replication.js"),
    ...(opts.quick ? ["--quick"] : ["--size-gib", String(opts.sizeBytes / GiB)]),
    ...(opts.keep ? ["--keep"] : []),
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  if (r.signal === "SIGINT" || r.status === 130) throw new Interrupted("the replication benchmark", "SIGINT");
  return r.status ?? 1;
}

/** The launch benchmark (bench/launch.ts), in its own process: it writes launch.{json,md}. */
function launchBench(opts: Options): number {
  const args = [
    path.join(import.meta.dirname, "launch.js"),
    ...(opts.quick ? ["--quick"] : ["--size-gib", String(opts.sizeBytes / GiB)]),
    ...(opts.keep ? ["--keep"] : []),
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  if (r.signal === "SIGINT" || r.status === 130) throw new Interrupted("the launch benchmark", "SIGINT");
  return r.status ?? 1;
}

function main(): number {
  const opts = parseOptions();
  if (opts.only === "api") return apiBench();
  if (opts.only === "launch") {
    requireRoot("The launch benchmark");
    return launchBench(opts);
  }
  if (opts.only === "replication") {
    requireRoot("The replication benchmark");
    return replicationBench(opts);
  }
  requireRoot("The benchmark");
  trapInterrupts();
  requireTimeBinary();
  const start = performance.now();

  const images = ensureImages(opts.sizeBytes, { rebuild: opts.rebuildImage });

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
  // Warm: both images and every repository are read into the page cache before each step.
  setCacheMode(opts.warm ? "warm" : "cold", [images.base, images.changed, repos]);
  const notes: string[] = [];
  if (images.description.contents.os.source.includes("fallback"))
    notes.push(images.description.contents.os.note);
  let outcome: ReturnType<typeof runSuites>;
  try {
    outcome = runSuites(opts, ctx, notes);
  } finally {
    if (opts.keep) log(`repositories kept in ${repos}`);
    else removeTree(repos);
  }

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
  const partial = opts.only !== null || opts.sizeBytes !== 2 * GiB;
  const dir = partial ? path.join(WORK, "results") : RESULTS;
  mkdirSync(dir, { recursive: true });
  const markdown = renderMarkdown(results);
  const base = opts.warm ? "warm" : "latest";
  writeAtomically(path.join(dir, `${base}.json`), JSON.stringify(results, null, 2) + "\n");
  writeAtomically(path.join(dir, `${base}.md`), markdown);
  console.log(markdown);
  log(`results written to ${path.relative(process.cwd(), dir) || dir}/${base}.{json,md}`);

  const failed = notes.some((n) => n.includes("failed")) || outcome.steps.some((s) => s.verified === false);
  const replicationFailed = opts.only === null && !opts.warm && replicationBench(opts) !== 0;
  const launchFailed = opts.only === null && !opts.warm && launchBench(opts) !== 0;
  const apiFailed = opts.only === null && apiBench() !== 0;
  return failed || replicationFailed || launchFailed || apiFailed ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (err) {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = err instanceof Interrupted ? 130 : 1;
}
