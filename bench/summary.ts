/**
 * bench/RESULTS.md: one report of one `npm run bench`, built from the figures
 * each section produced in that run (peers section, replication, launch, API
 * load): the machine, a headline table of Lifeboat:peer ratios, each
 * section's figures, and how to reproduce them. The detailed per-section
 * reports stay in bench/results/*.md. Pure rendering plus a write-then-rename
 * writer, so a test can feed it figures.
 */
import { renameSync, writeFileSync } from "node:fs";
import type { LaunchResults } from "./launch.js";
import type { StepResult } from "./peers.js";
import {
  comparisonRows,
  imageSummary,
  STEP_HEADER,
  stepRows,
  table,
  type BenchResults,
  type MachineFacts,
} from "./report.js";
import { renderOverhead, type ReplicationResults } from "./replication-report.js";

export interface SummaryInput {
  generatedAt: string;
  /** The command line that produced the run. */
  command: string;
  runSeconds: number;
  /** Wall seconds per section, in the order they ran. */
  sectionSeconds: Record<string, number>;
  machine: MachineFacts;
  peers: BenchResults | null;
  replication: ReplicationResults | null;
  launch: LaunchResults | null;
  /** Where this run's detailed per-section reports are, relative to the repository root. */
  detailsDir: string;
  /** api.md of this run, as written by bench/api.ts. */
  apiMarkdown: string | null;
  notes: string[];
}

/** Peers in the headline table, in order; rsync is a copy, not a repository. */
const PEERS = ["restic", "borg", "borg-fixed4m", "casync", "rsync"] as const;

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
const x = (n: number): string => (Number.isFinite(n) ? `${n.toFixed(2)}×` : "–");

/** Writes through a temporary file and a rename: a crash never leaves half a report. */
export function writeSummary(file: string, input: SummaryInput): string {
  const text = renderSummary(input);
  writeFileSync(file + ".tmp", text);
  renameSync(file + ".tmp", file);
  return text;
}

export function renderSummary(r: SummaryInput): string {
  const parts: string[] = [
    `# Lifeboat benchmark results, ${r.generatedAt.slice(0, 16).replace("T", " ")} UTC`,
    "",
    `Produced by \`${r.command}\` in one run of ${fmtSeconds(r.runSeconds)} ` +
      `(${Object.entries(r.sectionSeconds)
        .map(([k, v]) => `${k} ${fmtSeconds(v)}`)
        .join(", ")}). ` +
      "Every figure below comes from that run, on the same images and the same machine. " +
      `Detailed per-section reports of the same run: ${r.detailsDir}/latest.md, replication.md, launch.md, api.md.`,
    "",
    "## Machine",
    "",
    ...machineTable(r.machine),
  ];
  if (r.peers) parts.push("", ...headline(r), "", ...ingestSection(r.peers));
  if (r.launch) parts.push("", ...launchSection(r.launch));
  if (r.replication) parts.push("", ...replicationSection(r.replication, r.peers));
  if (r.replication) parts.push("", ...rpoSection(r.replication));
  if (r.replication) parts.push("", "## Trace-mode overhead", "", ...renderOverhead(r.replication));
  if (r.apiMarkdown) parts.push("", ...apiSection(r.apiMarkdown));
  parts.push("", ...reproduce());
  if (r.notes.length > 0) parts.push("", "## Notes", "", ...r.notes.map((n) => `- ${n}`));
  parts.push("");
  return parts.join("\n");
}

function fmtSeconds(s: number): string {
  return s >= 120 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;
}

function machineTable(m: MachineFacts): string[] {
  const d = m.disk;
  const disk = d
    ? `${d.device} (${d.model}; the kernel reports it ${d.rotational === null ? "neither rotational nor not" : d.rotational ? "rotational" : "non-rotational"}), ` +
      `${d.filesystem}, ${d.sizeGiB} GiB, ${d.freeGiB} GiB free`
    : "unknown";
  return [
    table(
      ["", ""],
      [
        ["cores", `${m.nproc} × ${m.cpuModel}`],
        ["memory", `${m.memoryGiB} GiB`],
        ["kernel", `Linux ${m.kernel}`],
        ["node", m.node],
        ["disk (images and repositories)", disk],
        ["lifeboat", `commit ${m.lifeboatCommit}`],
        ...Object.entries(m.tools).map(([k, v]) => [k, v]),
      ],
    ),
  ];
}

/** The one table to read: Lifeboat relative to each peer, every ratio oriented so that above 1 favours lifeboat. */
function headline(r: SummaryInput): string[] {
  const steps = r.peers?.steps ?? [];
  const find = (tool: string, phase: StepResult["phase"]): StepResult | undefined =>
    steps.find((s) => s.tool === tool && s.phase === phase);
  const lb = (phase: StepResult["phase"]) => find("lifeboat", phase);
  const peers = PEERS.filter((p) => steps.some((s) => s.tool === p));
  const speed = (phase: StepResult["phase"]) => (p: string) => {
    const a = lb(phase);
    const b = find(p, phase);
    return a && b ? x(b.seconds / a.seconds) : "–";
  };
  const size = (phase: "initial" | "changed") => (p: string) => {
    const a = lb(phase);
    const b = find(p, phase);
    return a && b && p !== "rsync" ? x(b.repoBytes / a.repoBytes) : "–";
  };
  const rows: string[][] = [
    ["store ingest, first backup (seconds)", ...peers.map(speed("initial"))],
    ["store ingest, incremental after ~1% change (seconds)", ...peers.map(speed("changed"))],
    ["repository size after the first backup", ...peers.map(size("initial"))],
    ["repository size after both (dedup)", ...peers.map(size("changed"))],
    ["restore of the changed image, peers section (seconds)", ...peers.map(speed("restore"))],
    ["check of every stored byte of both backups (seconds)", ...peers.map(speed("check"))],
  ];
  const launch = r.launch;
  if (launch) {
    const exp = launch.tools.find((t) => t.name === "lifeboat export");
    const mat = launch.tools.find((t) => t.name === "lifeboat materialize");
    const median = (lbTool: typeof exp) => (p: string) => {
      const peer = launch.tools.find((t) => t.name === p);
      return lbTool && peer ? x(peer.medianSeconds / lbTool.medianSeconds) : "–";
    };
    rows.push(
      [`restore: lifeboat export, median of ${launch.options.rounds}`, ...peers.map(median(exp))],
      [
        `materialize (export + SHA-256 + manifest), median of ${launch.options.rounds}`,
        ...peers.map(median(mat)),
      ],
    );
  }
  const rep = r.replication;
  if (rep) {
    const viaPeer = (phase: "initial" | "changed", lbSeconds: number) => (p: string) => {
      const b = find(p, phase);
      return b ? x(b.seconds / lbSeconds) : "–";
    };
    rows.push(
      [
        "replication: initial sync vs the peer's first backup",
        ...peers.map(viaPeer("initial", rep.initial.seconds)),
      ],
      [
        "replication: ~1% change to committed PIT vs the peer's incremental",
        ...peers.map(viaPeer("changed", rep.incremental.pitSeconds)),
      ],
    );
  }
  return [
    "## Lifeboat : peer",
    "",
    "Each cell is peer ÷ lifeboat for times and sizes, so **above 1× favours lifeboat** (faster, or a smaller " +
      "repository); below 1× the peer does better. rsync keeps a plain copy, so it has no repository-size ratio. " +
      "Sections below give the figures behind each ratio.",
    "",
    table(["measure", ...peers], rows),
  ];
}

function ingestSection(p: BenchResults): string[] {
  const lbChanged = p.steps.find((s) => s.tool === "lifeboat" && s.phase === "changed");
  const dedup = p.steps
    .filter((s) => s.phase === "changed" && s.tool !== "rsync")
    .map((s) => [
      s.tool,
      mb(2 * p.options.sizeBytes),
      mb(s.repoBytes),
      x((2 * p.options.sizeBytes) / s.repoBytes).replace("×", ":1"),
    ]);
  return [
    "## Store ingest, dedup and restore (the images as files)",
    "",
    imageSummary(p.image),
    "",
    `Cache: ${p.options.cache === "cold" ? "cold (page cache dropped before every step)" : "warm"}. ` +
      "Each tool backs up base.img (initial), then changed.img (changed), into one repository; restores write " +
      "the changed image back to a file and are checked with cmp; checks read back every stored byte of both " +
      "backups (MB/s: repository bytes per second). " +
      (p.steps.some((s) => (s.roundSeconds?.length ?? 0) > 1)
        ? "Each step's figures are its median round's (fresh repositories every round), with every round's " +
          "seconds in the last column; the restore medians of the launch section are over rounds of their own."
        : "One run per step here; the restore medians are in the launch section."),
    "",
    table(STEP_HEADER, stepRows(p.steps)),
    "",
    "Lifeboat relative to each peer, as throughput (lifeboat MB/s ÷ peer MB/s) and size (lifeboat repository ÷ " +
      "peer repository: below 1 lifeboat is smaller):",
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
      comparisonRows(p.comparisons),
    ),
    "",
    "Dedup ratio after both backups (bytes given to the tool ÷ repository size; compression included):",
    "",
    table(["tool", "bytes in MB", "repository MB", "dedup ratio"], dedup),
    ...(lbChanged?.note ? ["", `Lifeboat's own account of the incremental: ${lbChanged.note}`] : []),
  ];
}

function launchSection(l: LaunchResults): string[] {
  return [
    "## Restore and materialize (launch)",
    "",
    `The changed image out of each repository, ${l.options.rounds} rounds in a rotating order, page cache dropped ` +
      "before each; median seconds (lifeboat `call` = inside the function, without starting Node). " +
      "Ratio = peer median ÷ lifeboat median (above 1: lifeboat faster).",
    "",
    table(
      ["tool", "median s", "MB/s", "call s", "peak RSS MiB", "identical", "rounds s"],
      l.tools.map((t) => [
        t.name,
        t.medianSeconds.toFixed(2),
        t.mbPerSec.toFixed(1),
        t.medianCallSeconds?.toFixed(2) ?? "",
        t.peakRssMiB.toFixed(0),
        t.verified ? "yes" : "**NO**",
        t.samples.map((s) => s.seconds.toFixed(2)).join(", "),
      ]),
    ),
    "",
    table(
      ["lifeboat", "peer", "ratio"],
      l.ratios.map((q) => [q.lifeboat, q.peer, x(q.ratio)]),
    ),
    "",
    l.recoveryTime,
  ];
}

function replicationSection(r: ReplicationResults, peers: BenchResults | null): string[] {
  const i = r.initial;
  const c = r.incremental;
  const peerRows: string[][] = [];
  const steps = r.peers.length > 0 ? r.peers : (peers?.steps ?? []);
  for (const s of steps) {
    if (s.tool === "lifeboat" || s.phase === "restore" || s.phase === "check") continue;
    const lbSeconds = s.phase === "initial" ? i.seconds : c.pitSeconds;
    peerRows.push([s.phase, s.tool, lbSeconds.toFixed(1), s.seconds.toFixed(1), x(s.seconds / lbSeconds)]);
  }
  const source =
    r.peers.length > 0
      ? "the peers backed up the agent's own image file right after each lifeboat step"
      : "the peer figures are the store-ingest section's backups of base.img and changed.img in this run (the " +
        "agent's disk is a copy of base.img; changed.img holds the same kind of scattered writes plus one new file, " +
        "so the peers' incremental carries a little more data than the agent's)";
  return [
    "## Replication (agent → replicator over TLS)",
    "",
    `The agent (trace mode, ${r.options.blockSize / 1024} KiB blocks) replicates a loop device holding a copy of ` +
      `base.img (ext4, mounted) to a real \`lifeboat server start\` on loopback.`,
    "",
    table(
      ["step", "seconds", "MB/s", "sent MB", "CPU s (agent + server)", "notes"],
      [
        [
          "initial sync (every block acknowledged)",
          i.seconds.toFixed(1),
          i.mbPerSec.toFixed(1),
          mb(i.bytesSent),
          `${i.agentCpuSeconds.toFixed(1)} + ${i.serverCpuSeconds.toFixed(1)}`,
          `first PIT committed at ${i.pitSeconds.toFixed(1)} s (${i.pitConsistency})`,
        ],
        [
          `~1% change: ${c.writes} scattered 4 KiB writes → committed PIT`,
          c.pitSeconds.toFixed(1),
          "",
          mb(c.bytesSent),
          `${c.agentCpuSeconds.toFixed(1)} + ${c.serverCpuSeconds.toFixed(1)}`,
          `${mb(c.bytesWritten)} MB written, ${c.sentPerWritten}× sent; seconds from the last write`,
        ],
      ],
    ),
    "",
    `Against the peers (peer seconds ÷ lifeboat seconds, above 1: lifeboat has its copy sooner); ${source}.`,
    "",
    table(["step", "peer", "lifeboat s", "peer s", "ratio"], peerRows),
    "",
    `Peak RSS through the initial sync, the change and the RPO step: agent side ${r.rss.agentMaxRssMiB.toFixed(0)} ` +
      "MiB" +
      (r.rss.beforeAgentMiB !== undefined
        ? ` (the benchmark process, which held ${r.rss.beforeAgentMiB.toFixed(0)} MiB before the agent was made)`
        : "") +
      `, server ${r.rss.serverVmHwmMiB.toFixed(0)} MiB` +
      (r.rssWithOverhead
        ? `; ${r.rssWithOverhead.agentMaxRssMiB.toFixed(0)} and ${r.rssWithOverhead.serverVmHwmMiB.toFixed(0)} ` +
          `MiB at the end of the run, after the overhead step (heavier writes, and ${r.overhead.rounds} new agents ` +
          "started in the benchmark process)."
        : "."),
  ];
}

function rpoSection(r: ReplicationResults): string[] {
  const p = r.rpo;
  return [
    "## RPO under load",
    "",
    `While \`${r.options.fio}\` ran for ${p.seconds} s on the source ext4 (load before: ${p.load1}), the ` +
      "replication lag — the age of the newest data durable at the replicator, i.e. of the oldest write it has " +
      `not acknowledged — was sampled every 100 ms (${p.samples} samples).`,
    "",
    table(
      [
        "lag p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "workload MB/s",
        "caught up after s",
        "agent CPU",
        "server CPU",
        "trace losses",
      ],
      [
        [
          p.lagP50.toFixed(2),
          p.lagP95.toFixed(2),
          p.lagP99.toFixed(2),
          p.lagMax.toFixed(2),
          p.workload.mbPerSec.toFixed(1),
          p.drainSeconds.toFixed(1),
          `${p.agentCpuPercentOfCore}% of a core`,
          `${p.serverCpuPercentOfCore}% of a core`,
          String(p.traceLosses),
        ],
      ],
    ),
  ];
}

/** api.md without its title, headed as a section. */
function apiSection(md: string): string[] {
  const body = md
    .split("\n")
    .filter((l) => !l.startsWith("# "))
    .join("\n")
    .trim();
  return ["## API load (control plane)", "", body];
}

function reproduce(): string[] {
  return [
    "## How to reproduce",
    "",
    "On a Debian 12 machine, as root (loop devices, mounts, tracefs, dropping the page cache):",
    "",
    "```sh",
    "apt-get install -y restic borgbackup rsync casync fio time debootstrap   # run.js installs missing ones itself",
    ". .ci/postgres.sh            # optional: LIFEBOAT_TEST_PG_URL, for the API section's PostgreSQL half",
    "npm ci",
    "npm run bench                # 2 GiB image: writes bench/RESULTS.md and bench/results/*",
    "npm run bench -- --quick     # 256 MiB smoke run: writes bench/work/results/ instead",
    "```",
    "",
    "The first run also builds the images (debootstrap of a minimal Debian, then the generated data: a few " +
      "minutes); they are cached in bench/work/. tracefs is mounted at /sys/kernel/tracing if it is not. " +
      "Absolute figures depend on the disk and on other load (the `load before` columns); compare within a run.",
  ];
}
