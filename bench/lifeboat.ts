/**
 * Lifeboat's side of the benchmark, through its CLI exactly as an operator
 * would run it: `store init`, `store import` of the base then the changed
 * image as two PITs of one server, `store export` of the latest PIT,
 * `store verify --read-data`, and `store stats --json` after each import.
 */
import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { step, sameContent, timed, type StepResult, type SuiteContext } from "./peers.js";
import { ROOT, dirBytes, log, run } from "./sys.js";

const CLI = path.join(ROOT, "bin", "lifeboat.js");
const SERVER = "bench";

function lifeboatArgs(args: readonly string[]): string[] {
  return [CLI, ...args];
}

/** True when the CLI is built and has the `store import --disk` command this suite drives. */
export function lifeboatReady(): boolean {
  const r = run(process.execPath, lifeboatArgs(["store", "import", "--help"]), { allowFail: true });
  return r.status === 0 && (r.stdout + r.stderr).includes("--disk");
}

export interface LifeboatStats {
  chunkSize?: number;
  storedBytes?: { total?: number };
  [key: string]: unknown;
}

export interface LifeboatOutcome {
  steps: StepResult[];
  /** `store stats --json` after the initial and after the changed import. */
  stats: { initial: LifeboatStats; changed: LifeboatStats };
}

export function lifeboatSuite(ctx: SuiteContext): LifeboatOutcome {
  const repo = path.join(ctx.repos, "lifeboat");
  const keyFile = path.join(path.dirname(ctx.secrets.passwordFile), "lifeboat.key");
  const common = ["--repo", repo, "--key-file", keyFile];
  const opts = { cwd: ctx.repos };
  const node = process.execPath;

  run(node, lifeboatArgs(["store", "init", ...common]), opts);
  const importCmd = (img: string): string[] =>
    lifeboatArgs(["store", "import", ...common, "--server", SERVER, "--disk", img]);
  const stats = (): LifeboatStats =>
    JSON.parse(
      run(node, lifeboatArgs(["store", "stats", ...common, "--json"]), opts).stdout,
    ) as LifeboatStats;

  const cmd = "lifeboat store import --server bench --disk IMG";
  const initial = timed(node, importCmd(ctx.base), opts);
  const steps = [
    step("lifeboat", "initial", cmd, initial, ctx.imageBytes, repo, { note: summary(initial.stdout) }),
  ];
  const statsInitial = stats();
  const changed = timed(node, importCmd(ctx.changed), opts);
  steps.push(
    step("lifeboat", "changed", cmd, changed, ctx.imageBytes, repo, { note: summary(changed.stdout) }),
  );
  const statsChanged = stats();

  const outDir = path.join(ctx.repos, "lifeboat-export");
  mkdirSync(outDir, { recursive: true });
  const out = path.join(outDir, "disk0.img");
  const exportArgs = [
    "store",
    "export",
    ...common,
    "--pit",
    "latest",
    "--server",
    SERVER,
    "--disk",
    "0",
    "--out",
    out,
  ];
  const exported = timed(node, lifeboatArgs(exportArgs), opts);
  const verified = sameContent(out, ctx.changed);
  if (!verified) log("lifeboat export differs from changed.img!");
  steps.push(
    step(
      "lifeboat",
      "restore",
      "lifeboat store export --pit latest --disk 0 --out FILE",
      exported,
      ctx.imageBytes,
      repo,
      {
        verified,
      },
    ),
  );
  rmSync(outDir, { recursive: true, force: true });
  const checked = timed(node, lifeboatArgs(["store", "verify", ...common, "--read-data"]), opts);
  steps.push(step("lifeboat", "check", "lifeboat store verify --read-data", checked, dirBytes(repo), repo));
  return { steps, stats: { initial: statsInitial, changed: statsChanged } };
}

/** The CLI's one-line summary of an import ("new chunks ... stored ..."), kept for the report. */
function summary(stdout: string): string {
  return stdout.trim().split("\n").slice(-1)[0]?.trim() ?? "";
}
