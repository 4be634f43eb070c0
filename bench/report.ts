/**
 * Turns step measurements into the comparison lifeboat cares about (its
 * throughput and repository size relative to each peer, step by step) and
 * renders the results as JSON and as a markdown report.
 */
import { existsSync } from "node:fs";
import { cpus, release, totalmem, availableParallelism } from "node:os";
import type { ImageDescription } from "./make-image.js";
import type { Phase, StepResult } from "./peers.js";
import { round, toolVersions } from "./peers.js";
import { GiB, MiB, ROOT, WORK, run } from "./sys.js";

/** Peers lifeboat is compared with; rsync is a baseline shown in the steps table only. */
const COMPARED = ["restic", "borg", "borg-fixed4m", "casync"] as const;
const PHASES: Phase[] = ["initial", "changed", "restore"];

/** The disk the benchmark's images and repositories live on. */
export interface DiskFacts {
  /** Block device under bench/work (e.g. /dev/vda). */
  device: string;
  model: string;
  /** The kernel's rotational flag: false for SSDs and most virtual disks. */
  rotational: boolean | null;
  sizeGiB: number;
  filesystem: string;
  freeGiB: number;
}

export interface MachineFacts {
  nproc: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  lifeboatCommit: string;
  tools: Record<string, string>;
  disk?: DiskFacts | null;
}

export interface Comparison {
  phase: Phase;
  peer: string;
  lifeboatMbPerSec: number;
  peerMbPerSec: number;
  /** lifeboat MB/s ÷ peer MB/s: above 1, lifeboat is faster. */
  throughputRatio: number;
  lifeboatRepoBytes: number;
  peerRepoBytes: number;
  /** lifeboat repository ÷ peer repository after the same step: below 1, lifeboat is smaller. Null for restores. */
  sizeRatio: number | null;
}

export interface BenchResults {
  generatedAt: string;
  options: { sizeBytes: number; only: string | null; quick: boolean; cache: "cold" | "warm" };
  method: string[];
  machine: MachineFacts;
  image: ImageDescription;
  imageGeneratedThisRun: boolean;
  runSeconds: number;
  steps: StepResult[];
  comparisons: Comparison[];
  lifeboatStats: unknown;
  notes: string[];
}

export const METHOD = [
  "All tools read the same base.img then changed.img; peers read the image on stdin as one file named disk0.img.",
  "The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step.",
  "Wall seconds from a monotonic clock around the command and a final `sync` (the step ends when its output is on disk); peak RSS from /usr/bin/time %M.",
  "Steps run one at a time; 'load before' is the 1-minute load average as each step starts (other work on the machine slows every tool).",
  "Several rounds (--rounds, default 3), each into fresh repositories: a step's figures are those of its median round by seconds, and the last column lists every round's seconds.",
  "MB/s = image bytes / seconds, 1 MB = 10^6 bytes. Repository sizes are `du -sb` after the step.",
  "Restores (lifeboat export, restic restore, casync extract) write the latest snapshot to a file, then cmp it with changed.img (not timed).",
  "Checks (lifeboat `store verify --read-data`, restic `check --read-data`, borg `check --verify-data`) read back every stored byte of both backups, decrypt it and check it against its hash; their MB/s is repository bytes / seconds, and the headline compares seconds. casync has no such check.",
  "restic: repository format 2 (zstd, auto). borg: repokey-blake2, default lz4 compression; default buzhash chunker and fixed 4 MiB chunks.",
  "casync: `make --compression=zstd` with its default content-defined chunks (64 KiB average) into a directory store, no encryption; it reads the image file itself. Its restore (`extract`) punches holes for zero chunks (its default), so the output is sparse.",
];

export function machineFacts(): MachineFacts {
  const git = run("git", ["rev-parse", "--short", "HEAD"], { allowFail: true });
  return {
    nproc: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? "unknown",
    memoryGiB: round(totalmem() / GiB, 1),
    kernel: release(),
    node: process.version,
    lifeboatCommit: git.status === 0 ? git.stdout.trim() : "unknown",
    tools: toolVersions(),
    disk: diskFacts(),
  };
}

/** What `findmnt`, `lsblk` and `df` say about the filesystem holding bench/work (null if they cannot tell). */
export function diskFacts(dir: string = WORK): DiskFacts | null {
  const q = (cmd: string, args: string[]): string => {
    const r = run(cmd, args, { allowFail: true });
    return r.status === 0 ? r.stdout.trim() : "";
  };
  const target = existsSync(dir) ? dir : ROOT;
  const [source = "", fstype = "", size = "", avail = ""] = q("findmnt", [
    "-n",
    "-b",
    "-o",
    "SOURCE,FSTYPE,SIZE,AVAIL",
    "--target",
    target,
  ]).split(/\s+/);
  if (!source.startsWith("/dev/")) return null;
  // The whole disk under a partition or mapper device, for its model and rotational flag.
  const parent = q("lsblk", ["-ndo", "PKNAME", source]).split("\n")[0] || source.replace("/dev/", "");
  const [rota = "", ...model] = q("lsblk", ["-ndo", "ROTA,MODEL", `/dev/${parent}`]).split(/\s+/);
  return {
    device: source,
    model: model.join(" ") || "no model reported",
    rotational: rota === "1" ? true : rota === "0" ? false : null,
    sizeGiB: round(Number(size) / GiB, 1),
    filesystem: fstype,
    freeGiB: round(Number(avail) / GiB, 1),
  };
}

export function compare(steps: readonly StepResult[]): Comparison[] {
  const find = (tool: string, phase: Phase): StepResult | undefined =>
    steps.find((s) => s.tool === tool && s.phase === phase);
  const out: Comparison[] = [];
  for (const phase of PHASES) {
    const lb = find("lifeboat", phase);
    if (!lb) continue;
    for (const peer of COMPARED) {
      const p = find(peer, phase);
      if (!p) continue;
      out.push({
        phase,
        peer,
        lifeboatMbPerSec: lb.mbPerSec,
        peerMbPerSec: p.mbPerSec,
        throughputRatio: round(lb.mbPerSec / p.mbPerSec, 2),
        lifeboatRepoBytes: lb.repoBytes,
        peerRepoBytes: p.repoBytes,
        sizeRatio: phase === "restore" ? null : round(lb.repoBytes / p.repoBytes, 2),
      });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Markdown

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);

export function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

export function stepRows(steps: readonly StepResult[]): string[][] {
  return steps.map((s) => {
    const initial = steps.find((x) => x.tool === s.tool && x.phase === "initial");
    const delta = s.phase === "changed" && initial ? mb(s.repoBytes - initial.repoBytes) : "";
    const check = s.verified === undefined ? "" : s.verified ? "identical" : "**DIFFERS**";
    return [
      s.tool,
      s.phase,
      s.seconds.toFixed(1),
      s.syncSeconds.toFixed(1),
      s.mbPerSec.toFixed(1),
      s.peakRssMiB.toFixed(0),
      mb(s.repoBytes),
      delta,
      check,
      s.load1.toFixed(1),
      (s.roundSeconds ?? []).map((x) => x.toFixed(1)).join(", "),
    ];
  });
}

/** The steps table's header (stepRows). */
export const STEP_HEADER = [
  "tool",
  "step",
  "seconds",
  "of which sync",
  "MB/s",
  "peak RSS MiB",
  "repo MB",
  "Δ repo MB",
  "restore check",
  "load before",
  "seconds per round",
];

/**
 * One step per tool and phase from several rounds of the same steps: the
 * round with the median seconds (the lower of the two middle ones for an
 * even count), with every round's seconds beside it.
 */
export function medianSteps(rounds: readonly (readonly StepResult[])[]): StepResult[] {
  const first = rounds[0] ?? [];
  if (rounds.length <= 1) return [...first];
  return first.map((s) => {
    const all = rounds
      .map((r) => r.find((x) => x.tool === s.tool && x.phase === s.phase))
      .filter((x): x is StepResult => x !== undefined);
    const sorted = [...all].sort((a, b) => a.seconds - b.seconds);
    const median = sorted[Math.floor((sorted.length - 1) / 2)]!;
    return { ...median, roundSeconds: all.map((x) => x.seconds) };
  });
}

export function comparisonRows(comparisons: readonly Comparison[]): string[][] {
  return comparisons.map((c) => [
    c.phase,
    c.peer,
    c.lifeboatMbPerSec.toFixed(1),
    c.peerMbPerSec.toFixed(1),
    `${c.throughputRatio.toFixed(2)}×`,
    c.sizeRatio === null ? "" : `${mb(c.lifeboatRepoBytes)} / ${mb(c.peerRepoBytes)}`,
    c.sizeRatio === null ? "" : c.sizeRatio.toFixed(2),
  ]);
}

export function imageSummary(d: ImageDescription): string {
  const c = d.contents;
  const part = (name: string, w: { bytes: number; files: number }): string =>
    `${name} ${mb(w.bytes)} MB (${w.files} files)`;
  return [
    `${(d.sizeBytes / GiB).toFixed(2)} GiB raw ext4, fully allocated, ${d.filesystem.usedPercent}% of blocks used ` +
      `(generator v${d.generatorVersion}, seed \`${d.seed}\`).`,
    `Contents: ${part("OS tree", c.os)} from ${c.os.source} (${c.os.note}); ${part("logs", c.logs)}; ` +
      `${part("SQLite", c.sqlite)}, ${c.sqlite.rows} rows; ${part("incompressible", c.incompressible)}; ` +
      `${part("duplicates", c.duplicates)}.`,
    `Change set: ${d.changes.writes} scattered 4 KiB in-place writes in ${d.changes.filesTouched} files ` +
      `(${(d.changes.fractionOfImageBlocks * 100).toFixed(2)}% of the image's blocks) plus one new ` +
      `${(d.changes.newFile.bytes / MiB).toFixed(0)} MiB file; changed image ${d.changed.usedPercent}% used.`,
    d.changes.differing ? differingLine(d.changes.differing) : "",
  ]
    .filter((l) => l !== "")
    .join("\n");
}

function differingLine(differing: Record<string, number>): string {
  const pct = Object.entries(differing)
    .map(([piece, share]) => `${(share * 100).toFixed(1)}% of ${piece}`)
    .join(", ");
  return `changed.img differs from base.img in ${pct} aligned pieces.`;
}

export function renderMarkdown(r: BenchResults): string {
  const m = r.machine;
  const tools = Object.entries(m.tools)
    .map(([k, v]) => `${k}: ${v}`)
    .join("; ");
  const parts = [
    `# Lifeboat benchmark, ${r.generatedAt.slice(0, 16).replace("T", " ")} UTC`,
    "",
    `Machine: ${m.nproc} × ${m.cpuModel}, ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}, ` +
      `lifeboat ${m.lifeboatCommit}. ${tools}.`,
    "",
    imageSummary(r.image),
    "",
    "## Steps",
    "",
    table(STEP_HEADER, stepRows(r.steps)),
  ];
  if (r.comparisons.length > 0) {
    parts.push(
      "",
      "## Lifeboat relative to peers",
      "",
      "Throughput ratio = lifeboat MB/s ÷ peer MB/s (above 1: lifeboat faster). " +
        "Size ratio = lifeboat repository ÷ peer repository after the same step (below 1: lifeboat smaller).",
      "",
      table(
        [
          "step",
          "peer",
          "lifeboat MB/s",
          "peer MB/s",
          "throughput ratio",
          "repo MB (lifeboat / peer)",
          "size ratio",
        ],
        comparisonRows(r.comparisons),
      ),
    );
  }
  parts.push("", "## Method", "", ...r.method.map((l) => `- ${l}`));
  if (r.notes.length > 0) parts.push("", "## Notes", "", ...r.notes.map((n) => `- ${n}`));
  parts.push(
    "",
    `Run time: ${Math.round(r.runSeconds)} s${r.imageGeneratedThisRun ? ` (including ${r.image.generationSeconds} s of image generation)` : " (images reused from cache)"}.`,
    "",
  );
  return parts.join("\n");
}
