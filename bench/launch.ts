/**
 * The launch benchmark (issue 5, and issue 2's restore target): time to
 * materialize a PIT of the realistic image against `restic restore` and
 * `borg extract` of the same image, in one run.
 *
 *   sudo node dist/bench/launch.js [--quick | --size-gib N] [--rounds N] [--baseline DIR] [--keep]
 *                                  [--repos DIR] [--results-dir DIR]
 *   sudo node dist/bench/run.js --only launch [--quick]
 *
 * Setup (not timed): base.img then changed.img (bench/make-image.ts) go into
 * a Lifeboat repository (`store import`, two PITs of one server), a restic
 * repository and a borg repository (`backup`/`create` from stdin, as in
 * peers.ts), and a casync store (`make`). With `--repos DIR` the setup is
 * skipped and the repositories of run.js's peers section (same images, same
 * layout: DIR/lifeboat, restic, borg, casync, secrets) are used. Then, for each round, in an order that rotates from round to
 * round, every restore of the changed image runs with a cold page cache
 * (`sync; echo 3 > /proc/sys/vm/drop_caches` before each), under GNU time
 * for peak RSS, with a final `sync` inside the timing; each tool's first
 * output is compared with changed.img by cmp (not timed); outputs are removed:
 *
 * - lifeboat export: exportDisk of every disk of the latest PIT (one here),
 *   in a process of its own (bench/launch-restore.ts);
 * - lifeboat materialize: the launch job's materializePit (exportDisk, then
 *   the SHA-256 of each image for the manifest);
 * - lifeboat export (baseline): with `--baseline DIR`, exportDisk of another
 *   build (DIR is a checkout whose dist/ is built), for a before/after figure;
 * - restic restore latest --target DIR;
 * - borg extract REPO::changed, in an empty directory;
 * - casync extract --store=STORE changed.caibx FILE.
 *
 * Reported: each round's seconds, the median, MB/s (image bytes ÷ median
 * seconds), peak RSS, the 1-minute load before each restore, and ratios
 * (peer median seconds ÷ lifeboat median seconds; above 1 lifeboat is faster).
 * A full run (2 GiB, default rounds) writes bench/results/launch.{json,md};
 * others write bench/work/results/; `--results-dir` overrides both.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { ensureImages, sizeFromArgs, type ImageDescription } from "./make-image.js";
import {
  CASYNC_EXTRACT_CMD,
  DISK_NAME,
  RESTIC_BACKUP,
  borgCreate,
  borgInit,
  borgRepo,
  casyncExtract,
  casyncMake,
  casyncPaths,
  makeSecrets,
  readSecrets,
  requireTimeBinary,
  resticInit,
  resticRepo,
  round,
  sameContent,
  timed,
  timedWithInput,
  type PeerRepo,
} from "./peers.js";
import { machineFacts, type MachineFacts } from "./report.js";
import { GiB, RESULTS, ROOT, WORK, log, removeTree, requireRoot, run, since, trapInterrupts } from "./sys.js";

const SERVER = "bench";
const CLI = path.join(ROOT, "bin", "lifeboat.js");
const RESTORE = path.join(import.meta.dirname, "launch-restore.js");
const DEFAULT_ROUNDS = 3;
const SETTLE_SECONDS = 5;

interface Options {
  sizeBytes: number;
  quick: boolean;
  rounds: number;
  baseline: string | null;
  keep: boolean;
  /** Repositories to reuse (run.js's peers section); null: set them up here. */
  repos: string | null;
  resultsDir: string | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      "size-gib": { type: "string" },
      quick: { type: "boolean" },
      rounds: { type: "string" },
      baseline: { type: "string" },
      keep: { type: "boolean" },
      only: { type: "string" },
      repos: { type: "string" },
      "results-dir": { type: "string" },
    },
  });
  const rounds = Number(values.rounds ?? DEFAULT_ROUNDS);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer`);
  return {
    sizeBytes: sizeFromArgs(values),
    quick: values.quick ?? false,
    rounds,
    baseline: values.baseline ? path.resolve(values.baseline) : null,
    keep: values.keep ?? false,
    repos: values.repos ? path.resolve(values.repos) : null,
    resultsDir: values["results-dir"],
  };
}

/** One restore of one round. */
export interface LaunchSample {
  round: number;
  seconds: number;
  syncSeconds: number;
  peakRssMiB: number;
  load1: number;
  /** lifeboat: seconds inside the call (exportDisk / materializePit), without process start and module loading. */
  callSeconds?: number;
  verified: boolean;
}

export interface LaunchTool {
  name: string;
  command: string;
  samples: LaunchSample[];
  medianSeconds: number;
  medianCallSeconds?: number;
  mbPerSec: number;
  peakRssMiB: number;
  verified: boolean;
}

export interface LaunchResults {
  generatedAt: string;
  options: {
    sizeBytes: number;
    rounds: number;
    quick: boolean;
    baseline: string | null;
    /** The baseline checkout's commit. */
    baselineCommit?: string;
  };
  machine: MachineFacts;
  image: ImageDescription;
  method: string[];
  pageCacheDropped: boolean;
  setupSeconds: Record<string, number>;
  /** The repositories came from run.js's peers section (no setup here). */
  reusedRepos?: boolean;
  tools: LaunchTool[];
  ratios: { lifeboat: string; peer: string; ratio: number }[];
  recoveryTime: string;
  runSeconds: number;
}

interface Contender {
  name: string;
  command: string;
  /** Runs the restore (timed) into `dir`, returns the measurement and the restored image. */
  restore(dir: string): { m: ReturnType<typeof timed>; image: string; callSeconds?: number };
}

/**
 * Flushes and waits before a restore: the virtual disk keeps writing what the
 * previous tool wrote (2 GiB) for a while after the guest's sync returns, and
 * the next tool would pay for it.
 */
function settle(): void {
  run("sync", []);
  run("sleep", [String(SETTLE_SECONDS)]);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

function lifeboatContender(
  name: string,
  how: "export" | "materialize",
  repo: string,
  keyFile: string,
  lib?: string,
): Contender {
  return {
    name,
    command:
      how === "export"
        ? "exportDisk of every disk of the latest PIT (bench/launch-restore.js --how export)"
        : "materializePit of the latest PIT: images, SHA-256, manifest (bench/launch-restore.js --how materialize)",
    restore(dir) {
      const args = [RESTORE, "--how", how, "--repo", repo, "--key-file", keyFile, "--server", SERVER];
      const m = timed(process.execPath, [...args, "--out", dir, ...(lib ? ["--lib", lib] : [])], {
        // As bin/lifeboat.js sets it for every command, the server included.
        env: { ...process.env, UV_THREADPOOL_SIZE: "16" },
      });
      const out = JSON.parse(m.stdout.trim().split("\n").pop() ?? "{}") as {
        seconds: number;
        files: string[];
      };
      return { m, image: out.files[0]!, callSeconds: out.seconds };
    },
  };
}

function main(): number {
  const opts = parseOptions();
  requireRoot("The launch benchmark");
  requireTimeBinary();
  trapInterrupts();
  const start = performance.now();
  const images = ensureImages(opts.sizeBytes);
  const reuse = opts.repos !== null;
  const repos = opts.repos ?? path.join(WORK, "launch-repos");
  if (!reuse) {
    removeTree(repos);
    mkdirSync(repos, { recursive: true });
  }
  const secrets = reuse ? readSecrets(path.join(repos, "secrets")) : makeSecrets(path.join(repos, "secrets"));
  const setupSeconds: Record<string, number> = {};
  const tools: LaunchTool[] = [];
  const casync = casyncPaths(repos);
  let results: LaunchResults;
  try {
    // --- Setup: the same two images into every tool's repository (not timed for the report).
    const lbRepo = path.join(repos, "lifeboat");
    const keyFile = path.join(repos, "secrets", "lifeboat.key");
    let restic: PeerRepo;
    let borg: PeerRepo;
    if (reuse) {
      restic = resticRepo(repos, secrets);
      borg = borgRepo(repos, secrets, "borg");
      for (const need of [lbRepo, restic.repo, borg.repo])
        if (!existsSync(need)) throw new Error(`--repos ${repos}: ${need} is missing`);
      log(`reusing the repositories in ${repos}`);
    } else {
      const common = ["--repo", lbRepo, "--key-file", keyFile];
      let t = performance.now();
      run(process.execPath, [CLI, "store", "init", ...common], { cwd: repos });
      for (const img of [images.base, images.changed])
        run(process.execPath, [CLI, "store", "import", ...common, "--server", SERVER, "--disk", img], {
          cwd: repos,
        });
      setupSeconds.lifeboat = round(since(t), 1);
      log(`lifeboat repository ready (${setupSeconds.lifeboat} s)`);

      t = performance.now();
      restic = resticInit(repos, secrets);
      for (const img of [images.base, images.changed])
        timedWithInput("restic", RESTIC_BACKUP, img, restic.opts);
      setupSeconds.restic = round(since(t), 1);
      log(`restic repository ready (${setupSeconds.restic} s)`);

      t = performance.now();
      borg = borgInit(repos, secrets, "borg");
      timedWithInput("borg", borgCreate(borg.repo, "initial"), images.base, borg.opts);
      timedWithInput("borg", borgCreate(borg.repo, "changed"), images.changed, borg.opts);
      setupSeconds.borg = round(since(t), 1);
      log(`borg repository ready (${setupSeconds.borg} s)`);

      t = performance.now();
      mkdirSync(casync.store, { recursive: true });
      run("casync", casyncMake(casync.store, casync.index("initial"), images.base));
      run("casync", casyncMake(casync.store, casync.index("changed"), images.changed));
      setupSeconds.casync = round(since(t), 1);
      log(`casync store ready (${setupSeconds.casync} s)`);
    }

    const contenders: Contender[] = [
      lifeboatContender("lifeboat export", "export", lbRepo, keyFile),
      lifeboatContender("lifeboat materialize", "materialize", lbRepo, keyFile),
      ...(opts.baseline
        ? [
            lifeboatContender(
              "lifeboat export (baseline)",
              "export",
              lbRepo,
              keyFile,
              path.join(opts.baseline, "dist"),
            ),
          ]
        : []),
      {
        name: "restic",
        command: "restic restore latest --target DIR",
        restore(dir) {
          const m = timed("restic", ["restore", "latest", "--target", dir], restic.opts);
          return { m, image: path.join(dir, "disk0.img") };
        },
      },
      {
        name: "borg",
        command: "borg extract REPO::changed (in an empty directory)",
        restore(dir) {
          const m = timed("borg", ["extract", `${borg.repo}::changed`], { ...borg.opts, cwd: dir });
          return { m, image: path.join(dir, "disk0.img") };
        },
      },
      ...(existsSync(casync.index("changed"))
        ? [
            {
              name: "casync",
              command: CASYNC_EXTRACT_CMD,
              restore(dir: string) {
                const out = path.join(dir, DISK_NAME);
                return {
                  m: timed("casync", casyncExtract(casync.store, casync.index("changed"), out)),
                  image: out,
                };
              },
            },
          ]
        : []),
    ];

    // --- Rounds: every restore, cold cache, in an order that rotates so no tool always goes first.
    const samples = new Map<string, LaunchSample[]>(contenders.map((c) => [c.name, []]));
    for (let r = 1; r <= opts.rounds; r++) {
      const order = contenders.map((_, i) => contenders[(i + r - 1) % contenders.length]!);
      for (const c of order) {
        const dir = path.join(repos, "restore");
        removeTree(dir);
        mkdirSync(dir, { recursive: true });
        settle();
        const { m, image, callSeconds } = c.restore(dir);
        // Each tool's first output is compared; later rounds run the same command on the same repository.
        const verified = r === 1 ? sameContent(image, images.changed) : true;
        removeTree(dir);
        const sample: LaunchSample = {
          round: r,
          seconds: round(m.seconds, 2),
          syncSeconds: round(m.syncSeconds, 2),
          peakRssMiB: round(m.peakRssKiB / 1024, 1),
          load1: round(m.load1, 2),
          ...(callSeconds !== undefined ? { callSeconds: round(callSeconds, 2) } : {}),
          verified,
        };
        samples.get(c.name)!.push(sample);
        log(
          `round ${r} ${c.name}: ${sample.seconds} s` +
            (callSeconds !== undefined ? ` (call ${sample.callSeconds} s)` : "") +
            `, ${sample.peakRssMiB} MiB, load ${sample.load1}${verified ? "" : ", DIFFERS from changed.img!"}`,
        );
      }
    }
    for (const c of contenders) {
      const s = samples.get(c.name)!;
      const med = median(s.map((x) => x.seconds));
      const calls = s.flatMap((x) => (x.callSeconds === undefined ? [] : [x.callSeconds]));
      tools.push({
        name: c.name,
        command: c.command,
        samples: s,
        medianSeconds: round(med, 2),
        ...(calls.length ? { medianCallSeconds: round(median(calls), 2) } : {}),
        mbPerSec: round(opts.sizeBytes / 1e6 / med, 1),
        peakRssMiB: Math.max(...s.map((x) => x.peakRssMiB)),
        verified: s.every((x) => x.verified),
      });
    }
    const ratios: LaunchResults["ratios"] = [];
    for (const lb of tools.filter((x) => x.name.startsWith("lifeboat")))
      for (const peer of tools.filter((x) => !x.name.startsWith("lifeboat")))
        ratios.push({
          lifeboat: lb.name,
          peer: peer.name,
          ratio: round(peer.medianSeconds / lb.medianSeconds, 2),
        });

    results = {
      generatedAt: new Date().toISOString(),
      options: {
        sizeBytes: opts.sizeBytes,
        rounds: opts.rounds,
        quick: opts.quick,
        baseline: opts.baseline,
        ...(opts.baseline
          ? {
              baselineCommit: run("git", ["-C", opts.baseline, "rev-parse", "--short", "HEAD"]).stdout.trim(),
            }
          : {}),
      },
      machine: machineFacts(),
      image: images.description,
      method: METHOD,
      pageCacheDropped: true,
      setupSeconds,
      reusedRepos: reuse,
      tools,
      ratios,
      recoveryTime: drillRecovery(images.changed, repos),
      runSeconds: Math.round(since(start)),
    };
  } finally {
    if (reuse) log(`repositories left to their owner in ${repos}`);
    else if (opts.keep) log(`repositories kept in ${repos}`);
    else removeTree(repos);
  }

  const full = opts.sizeBytes === 2 * GiB && opts.rounds >= DEFAULT_ROUNDS && !opts.quick;
  const dir = opts.resultsDir ?? (full ? RESULTS : path.join(WORK, "results"));
  mkdirSync(dir, { recursive: true });
  const markdown = renderLaunch(results);
  for (const [file, text] of [
    ["launch.json", JSON.stringify(results, null, 2) + "\n"],
    ["launch.md", markdown],
  ] as const) {
    writeFileSync(path.join(dir, file + ".tmp"), text);
    renameSync(path.join(dir, file + ".tmp"), path.join(dir, file));
  }
  console.log(markdown);
  log(`results written to ${path.relative(process.cwd(), dir) || dir}/launch.{json,md}`);
  return tools.every((x) => x.verified) ? 0 : 1;
}

const METHOD = [
  "Repositories: base.img then changed.img imported into each (lifeboat `store import` as two PITs of one server, `store init` defaults; restic `backup --stdin`, repository format 2; borg `create` from stdin, repokey-blake2, default chunker and lz4; casync `make --compression=zstd`, default chunk sizes). Every restore is of the changed image. Under `npm run bench` these are the peers section's repositories of the same run.",
  "Before every timed restore: `sync; echo 3 > /proc/sys/vm/drop_caches` (the page cache is dropped: repositories are read from the disk). The timing ends after a final `sync`, so a tool that leaves its output dirty in the page cache pays for writing it.",
  "Each restore runs in a process of its own under GNU time (peak RSS). lifeboat's process time includes starting Node and loading modules; `call` is the time inside exportDisk / materializePit, as a launch job running in the server spends it.",
  "restic and borg write every byte of the image (neither is asked for sparse output); lifeboat and casync (its default) leave zero chunks as holes. Each tool's first output is compared with changed.img by cmp, outside the timing.",
  "Rounds run every restore once, in an order rotated by one each round; the figure per tool is the median of its rounds. Before each restore: sync and a 5 s pause, so that one tool does not pay for the writes of the one before. Other work on the machine slows every tool: the load column shows it.",
];

const DRILL = path.join(import.meta.dirname, "launch-drill.js");

/**
 * A drill end to end (bench/launch-drill.ts): a `lifeboat server start` with
 * the changed image as a registered server's PIT, a drill to the image target
 * through the API; the report's recovery time and its steps, as one paragraph.
 */
function drillRecovery(image: string, work: string): string {
  const dir = path.join(work, "drill");
  removeTree(dir);
  mkdirSync(dir, { recursive: true });
  settle();
  try {
    const out = run(process.execPath, [DRILL, "--image", image, "--work", dir])
      .stdout.trim()
      .split("\n")
      .pop()!;
    const r = JSON.parse(out) as {
      seconds: number;
      recoverySeconds: number;
      steps: { name: string; seconds: number }[];
      image: string;
    };
    const same = sameContent(r.image, image);
    log(`drill: recovery time ${r.recoverySeconds} s`);
    return (
      `A drill of the changed image to the image target through a running \`lifeboat server start\` (POST /api/v1/launches, one server, cold page cache): ` +
      `recovery time ${round(r.recoverySeconds, 1)} s from the job's start to the target's success (${round(r.seconds, 1)} s from the request to the finished job); ` +
      `steps: ${r.steps.map((x) => `${x.name} ${round(x.seconds, 1)} s`).join(", ")}. ` +
      `The drill's disk ${same ? "is byte-identical to changed.img" : "differs from changed.img by the launched-copy changes (hostname, agent identity)"}.`
    );
  } catch (err) {
    return `The drill could not be measured: ${(err as Error).message.split("\n")[0]}`;
  } finally {
    removeTree(dir);
  }
}

function renderLaunch(r: LaunchResults): string {
  const L: string[] = [];
  const m = r.machine;
  const gib = (r.options.sizeBytes / GiB).toFixed(2);
  L.push(`# Launch benchmark: materializing a PIT, ${r.generatedAt.slice(0, 16).replace("T", " ")} UTC`, "");
  L.push(
    `Machine: ${m.nproc} × ${m.cpuModel}, ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}, lifeboat ${m.lifeboatCommit}. restic: ${m.tools.restic}; borg: ${m.tools.borg}; casync: ${m.tools.casync ?? "?"}.`,
    "",
  );
  L.push(
    `Image: ${gib} GiB raw ext4 (generator v${r.image.generatorVersion}), the changed image restored; ${r.options.rounds} round(s); page cache dropped before each restore: ${r.pageCacheDropped ? "yes" : "no"}. Setup (imports/backups, not timed for the comparison): ${
      r.reusedRepos
        ? "the repositories of the peers section of the same run"
        : Object.entries(r.setupSeconds)
            .map(([k, v]) => `${k} ${v} s`)
            .join(", ")
    }.`,
    "",
  );
  if (r.options.baseline)
    L.push(
      `Baseline: the store of ${r.options.baseline} at commit ${r.options.baselineCommit ?? "unknown"}.`,
      "",
    );
  L.push("## Restores", "");
  L.push("| tool | median s | MB/s | call s (median) | peak RSS MiB | identical | rounds: s (load before) |");
  L.push("| --- | --- | --- | --- | --- | --- | --- |");
  for (const t of r.tools) {
    const rounds = t.samples
      .map((s) => `${s.seconds}${s.callSeconds !== undefined ? ` [call ${s.callSeconds}]` : ""} (${s.load1})`)
      .join(", ");
    L.push(
      `| ${t.name} | ${t.medianSeconds} | ${t.mbPerSec} | ${t.medianCallSeconds ?? ""} | ${t.peakRssMiB} | ${t.verified ? "yes" : "**NO**"} | ${rounds} |`,
    );
  }
  L.push("", "## Lifeboat relative to peers", "");
  L.push(
    "Ratio = peer median seconds ÷ lifeboat median seconds (above 1: lifeboat restores sooner). Target: at least 2× restic.",
    "",
  );
  L.push("| lifeboat | peer | ratio | target 2× restic |");
  L.push("| --- | --- | --- | --- |");
  for (const x of r.ratios)
    L.push(
      `| ${x.lifeboat} | ${x.peer} | ${x.ratio.toFixed(2)}× | ${x.peer === "restic" ? (x.ratio >= 2 ? "met" : "missed") : ""} |`,
    );
  L.push("", "## Recovery time of a drill", "", r.recoveryTime, "");
  L.push("## Method", "", ...r.method.map((x) => `- ${x}`), "");
  return L.join("\n");
}

try {
  process.exitCode = main();
} catch (err) {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 1;
}
