/** The replication benchmark's results and their markdown rendering. */
import type { MachineFacts } from "./report.js";
import type { Phase, StepResult } from "./peers.js";

interface Cpu {
  agentCpuSeconds: number;
  serverCpuSeconds: number;
}

/** Thread roles of a CPU split (replication-site.ts, threadCpuSeconds), in the order reports list them. */
export const THREAD_ROLES = ["main", "block workers", "chunk workers", "other threads"] as const;
export type ThreadRole = (typeof THREAD_ROLES)[number];

/** CPU seconds (user, system) of a step by thread role, on the agent's side and the server's. */
export interface CpuSplit {
  agent: Record<ThreadRole, { user: number; system: number }>;
  server: Record<ThreadRole, { user: number; system: number }>;
}

export interface FioFigures {
  mbPerSec: number;
  iops: number;
  clatP50Us: number;
  clatP99Us: number;
  clatMeanUs: number;
}

export interface ReplicationResults {
  generatedAt: string;
  options: {
    sizeBytes: number;
    quick: boolean;
    rpoSeconds: number;
    overheadSeconds: number;
    fioRateMiBps: number;
    fio: string;
    /** The trace-overhead workload. */
    fio4k: string;
    /** Whether restic, borg and rsync ran inside this benchmark. */
    peers: boolean;
    blockSize: number;
    /**
     * UV_THREADPOOL_SIZE and GLIBC_TUNABLES of the agent (this process) and the server (its child),
     * as the agent's wrapper and docs/operations.md's unit set them. Absent in older results.
     */
    environment?: Record<string, string>;
  };
  machine: MachineFacts;
  imageUsedPercent: number;
  runSeconds: number;
  /** Start of the agent until every block is acknowledged (`seconds`), and until a first PIT (`pitSeconds`). */
  initial: Cpu & {
    seconds: number;
    pitSeconds: number;
    pitConsistency: string;
    mbPerSec: number;
    load1: number;
    bytesRead: number;
    bytesSent: number;
    repoBytes: number;
    /** Absent in results of runs before it was measured. */
    threads?: CpuSplit;
  };
  /** Scattered 4 KiB writes, then a PIT: `pitSeconds` from the end of the writes until it is committed. */
  incremental: Cpu & {
    writes: number;
    filesTouched: number;
    bytesWritten: number;
    writeSeconds: number;
    /** From the end of the writes until every block was acknowledged. */
    ackSeconds: number;
    pitSeconds: number;
    load1: number;
    pitConsistency: string;
    totalSeconds: number;
    bytesSent: number;
    sentPerWritten: number;
    /** Wire frames the change took (acknowledged sequence numbers, the PIT's own included). */
    framesSent: number;
    /** Most frames in flight (sent, not acknowledged) seen while shipping it, and the share of samples there. */
    windowFramesMax: number;
    windowFullShare: number;
    repoDeltaBytes: number;
    /** From the first write to the committed PIT; absent in results of runs before it was measured. */
    threads?: CpuSplit;
  };
  peers: StepResult[];
  comparisons: {
    phase: Phase;
    peer: string;
    lifeboatSeconds: number;
    peerSeconds: number;
    speedup: number;
  }[];
  rpo: {
    seconds: number;
    load1: number;
    samples: number;
    lagP50: number;
    lagP95: number;
    lagP99: number;
    lagMax: number;
    workload: FioFigures;
    bytesSent: number;
    drainSeconds: number;
    agentCpuSeconds: number;
    agentCpuPercentOfCore: number;
    serverCpuSeconds: number;
    serverCpuPercentOfCore: number;
    traceLosses: number;
    rescans: number;
  };
  /**
   * Uncapped 4 KiB random writes: rounds on the replicated disk (trace mode) with the agent shipping
   * ("with") and with its shipping held ("held": tracing only), rotated with rounds on the same file
   * with no agent ("without": stopped for the round, a new one started after it).
   */
  overhead: {
    roundSeconds: number;
    rounds: number;
    fileMiB: number;
    heldMbps: number;
    withRounds: FioFigures[];
    heldRounds: FioFigures[];
    withoutRounds: FioFigures[];
    /** Medians of the rounds. */
    with: FioFigures;
    held: FioFigures;
    without: FioFigures;
    load1With: number;
    load1Held: number;
    load1Without: number;
    /** How much worse than with no agent, in % (positive: the agent costs the workload). */
    iopsCostPercent: number;
    latencyMeanCostPercent: number;
    latencyP99CostPercent: number;
    heldIopsCostPercent: number;
    heldLatencyMeanCostPercent: number;
    heldLatencyP99CostPercent: number;
    agentCpuPercentOfCore: number;
    serverCpuPercentOfCore: number;
    heldAgentCpuPercentOfCore: number;
    traceLosses: number;
    /** Seconds waited for a quiet machine before each round, in the order run (replication.ts quiet()). */
    quietWaits?: number[];
    /** Seconds a new agent took to catch up (rescan) after each round without one. */
    restartSeconds?: number[];
  };
  /** Peak RSS through the initial sync, the change and the RPO step (one agent). */
  /** `beforeAgentMiB`: the benchmark process's RSS before the agent was made (absent in older results). */
  rss: { agentMaxRssMiB: number; serverVmHwmMiB: number; beforeAgentMiB?: number };
  /** The same at the end of the run, after the overhead step started new agents in the benchmark process. */
  rssWithOverhead?: { agentMaxRssMiB: number; serverVmHwmMiB: number };
  counters: Record<string, number>;
  repoBytes: number;
  notes: string[];
}

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

function fioRow(name: string, f: FioFigures): string[] {
  return [
    name,
    String(f.iops),
    f.mbPerSec.toFixed(1),
    String(f.clatMeanUs),
    String(f.clatP50Us),
    String(f.clatP99Us),
  ];
}

const signed = (n: number): string => `${n > 0 ? "+" : ""}${n.toFixed(1)}%`;

/** The trace-mode overhead table and its summary line (shared with RESULTS.md). */
export function renderOverhead(r: ReplicationResults): string[] {
  const o = r.overhead;
  const rounds = (xs: FioFigures[]): string => xs.map((x) => x.iops).join(", ");
  return [
    `\`${r.options.fio4k}\` (runtime ${o.roundSeconds} s, one write at a time) on a ${o.fileMiB} MiB file, ` +
      `${o.rounds} rounds of each kind, rotated: on the replicated ext4 with the agent tracking it in trace mode ` +
      "(tracefs block events) and shipping while fio writes; the same with the agent's shipping held (a " +
      `bandwidth cap of ${o.heldMbps} Mbit/s: it reads the trace and keeps its dirty set, and sends at most a ` +
      "frame a second), which is the cost of tracking alone; and with no agent: stopped for the round, a " +
      "new one started after it, which rescans the disk and catches up outside the rounds" +
      (o.restartSeconds ? ` (${o.restartSeconds.join(", ")} s)` : "") +
      ". Every kind writes the same file of the same disk (two disks, even two copies of one image on one " +
      "host filesystem, differed here by 10-20% in these IOPS with no agent at all). The agent catches up " +
      "after each of its rounds, outside them. The server (control plane and replicator) runs on the same " +
      "two cores here; at a site it runs elsewhere. " +
      (o.quietWaits
        ? "Every round starts on a quiet machine: after a `sync`, once both CPUs are under 10% busy for two " +
          `250 ms samples in a row (waits of ${o.quietWaits.join(", ")} s, in the order run). `
        : "") +
      "Medians of the rounds; load = mean 1-minute load average before the rounds.",
    "",
    table(
      ["run", "IOPS", "MB/s", "latency mean µs", "p50 µs", "p99 µs", "IOPS per round", "load before"],
      [
        [
          ...fioRow("replicated disk, agent tracing and shipping", o.with),
          rounds(o.withRounds),
          String(o.load1With),
        ],
        [
          ...fioRow("replicated disk, agent tracing, shipping held", o.held),
          rounds(o.heldRounds),
          String(o.load1Held),
        ],
        [...fioRow("replicated disk, no agent", o.without), rounds(o.withoutRounds), String(o.load1Without)],
      ],
    ),
    "",
    `Cost of tracking alone (held vs no agent; positive = worse with the agent): IOPS ${signed(o.heldIopsCostPercent)}, ` +
      `mean latency ${signed(o.heldLatencyMeanCostPercent)}, p99 latency ${signed(o.heldLatencyP99CostPercent)}; ` +
      `the agent used ${o.heldAgentCpuPercentOfCore}% of a core. ` +
      `Tracking and shipping (with vs no agent): IOPS ${signed(o.iopsCostPercent)}, ` +
      `mean latency ${signed(o.latencyMeanCostPercent)}, p99 latency ${signed(o.latencyP99CostPercent)}; ` +
      `the agent used ${o.agentCpuPercentOfCore}% of a core and the server ${o.serverCpuPercentOfCore}%. ` +
      `Trace losses: ${o.traceLosses}.`,
  ];
}

export function renderReplication(r: ReplicationResults): string {
  const m = r.machine;
  const i = r.initial;
  const c = r.incremental;
  const peer = (tool: string, phase: Phase): StepResult | undefined =>
    r.peers.find((s) => s.tool === tool && s.phase === phase);
  const steps: string[][] = [
    [
      "lifeboat",
      "initial sync (all blocks acknowledged)",
      i.seconds.toFixed(1),
      i.mbPerSec.toFixed(1),
      `agent ${i.agentCpuSeconds.toFixed(1)} + server ${i.serverCpuSeconds.toFixed(1)}`,
      mb(i.repoBytes),
      `sent ${mb(i.bytesSent)} MB, load ${i.load1}`,
    ],
    [
      "lifeboat",
      "first PIT committed (from start)",
      i.pitSeconds.toFixed(1),
      "",
      "",
      "",
      `consistency ${i.pitConsistency}`,
    ],
    [
      "lifeboat",
      "changed: PIT committed after the last write",
      c.pitSeconds.toFixed(2),
      "",
      `agent ${c.agentCpuSeconds.toFixed(1)} + server ${c.serverCpuSeconds.toFixed(1)}`,
      `+${mb(c.repoDeltaBytes)}`,
      `sent ${mb(c.bytesSent)} MB for ${mb(c.bytesWritten)} MB written (${c.sentPerWritten}×), load ${c.load1}`,
    ],
    ...r.peers.map((s) => {
      const first = peer(s.tool, "initial");
      const repo = s.phase === "changed" && first ? `+${mb(s.repoBytes - first.repoBytes)}` : mb(s.repoBytes);
      return [
        s.tool,
        s.phase === "initial" ? "initial backup" : "changed: backup of the changed image",
        s.seconds.toFixed(1),
        s.mbPerSec.toFixed(1),
        "",
        repo,
        `peak RSS ${s.peakRssMiB.toFixed(0)} MiB, sync ${s.syncSeconds.toFixed(1)} s, load ${s.load1.toFixed(1)}`,
      ];
    }),
  ];
  const parts = [
    `# Lifeboat replication benchmark, ${r.generatedAt.slice(0, 16).replace("T", " ")} UTC`,
    "",
    `Machine: ${m.nproc} × ${m.cpuModel}, ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}, ` +
      `lifeboat ${m.lifeboatCommit}.`,
    "",
    `Disk: a copy of the benchmark's ${(r.options.sizeBytes / 2 ** 30).toFixed(2)} GiB base.img ` +
      `(ext4, ${r.imageUsedPercent}% used) on a loop device (--direct-io=on), mounted noatime. ` +
      `Agent (replication engine, trace tracker, ${r.options.blockSize / 1024} KiB blocks) in the benchmark process; ` +
      "`lifeboat server start` (control plane + embedded replicator) as a child process on 127.0.0.1, TLS.",
    "",
    "## Initial sync and a 1% change",
    "",
    table(["tool", "step", "seconds", "MB/s", "CPU s", "repo MB", "notes"], steps),
    "",
    `Change: ${c.writes} scattered 4 KiB writes (fsync per file) in ${c.filesTouched} files, ` +
      `written in ${c.writeSeconds.toFixed(1)} s while the agent ran; \`status()\` first showed no backlog ` +
      `${c.ackSeconds.toFixed(2)} s after the last write, and the PIT holding them ` +
      `(asked for then) was committed ${c.pitSeconds.toFixed(2)} s after the last write ` +
      `(${c.totalSeconds.toFixed(1)} s from the first).`,
    "",
    ...(i.threads ? [...cpuSplit(i.threads, i.seconds, "sync"), ""] : []),
    ...(c.threads ? [...cpuSplit(c.threads, c.totalSeconds, "change"), ""] : []),
    `The change took ${c.framesSent} wire frames; while it shipped, up to ${c.windowFramesMax} frames were in flight ` +
      `(sent, not yet acknowledged), and ${Math.round(c.windowFullShare * 100)}% of the 20 ms samples were at that maximum.`,
    "",
    ...(r.comparisons.length === 0
      ? [
          "Peers were not run inside this benchmark (`--no-peers`): `npm run bench` compares against the " +
            "peers section's backups of the same image in bench/RESULTS.md.",
        ]
      : [
          "Peer seconds ÷ lifeboat seconds (above 1: lifeboat has the new point sooner). Initial: lifeboat's time to " +
            "all blocks acknowledged; changed: lifeboat's time from the end of the writes to the committed PIT, " +
            "against each peer's full backup of the changed image.",
          "",
          table(
            ["step", "peer", "lifeboat s", "peer s", "ratio"],
            r.comparisons.map((x) => [
              x.phase,
              x.peer,
              x.lifeboatSeconds.toFixed(2),
              x.peerSeconds.toFixed(1),
              `${x.speedup.toFixed(2)}×`,
            ]),
          ),
        ]),
    "",
    "## Lag under a steady write workload (RPO)",
    "",
    `\`${r.options.fio}\` on a file on the mounted disk for ${r.rpo.seconds} s (load before: ${r.rpo.load1}); ` +
      "`status().lagSeconds` (age of the oldest write not yet acknowledged by the replicator, i.e. of the " +
      "newest data durable there; see Method) sampled every 100 ms.",
    "",
    table(
      [
        "samples",
        "lag p50 s",
        "lag p95 s",
        "lag p99 s",
        "lag max s",
        "workload MB/s",
        "sent MB",
        "caught up after s",
        "agent CPU",
        "server CPU",
        "trace losses",
      ],
      [
        [
          String(r.rpo.samples),
          r.rpo.lagP50.toFixed(3),
          r.rpo.lagP95.toFixed(3),
          r.rpo.lagP99.toFixed(3),
          r.rpo.lagMax.toFixed(3),
          r.rpo.workload.mbPerSec.toFixed(1),
          mb(r.rpo.bytesSent),
          r.rpo.drainSeconds.toFixed(2),
          `${r.rpo.agentCpuSeconds.toFixed(1)} s (${r.rpo.agentCpuPercentOfCore}% of a core)`,
          `${r.rpo.serverCpuSeconds.toFixed(1)} s (${r.rpo.serverCpuPercentOfCore}% of a core)`,
          String(r.rpo.traceLosses),
        ],
      ],
    ),
    "",
    "## Trace-mode overhead",
    "",
    ...renderOverhead(r),
    "",
    "## Memory",
    "",
    `Peak RSS through the initial sync, the change and the RPO step: agent side ${r.rss.agentMaxRssMiB.toFixed(0)} ` +
      "MiB (the benchmark process's maxRSS, which holds the agent" +
      (r.rss.beforeAgentMiB !== undefined
        ? `; the process held ${r.rss.beforeAgentMiB.toFixed(0)} MiB before the agent was made`
        : "") +
      "), server " +
      `${r.rss.serverVmHwmMiB.toFixed(0)} MiB (VmHWM of the \`server start\` process). ` +
      (r.rssWithOverhead
        ? `At the end of the run, after the overhead step had started ${r.overhead.rounds} new agents in the ` +
          `benchmark process: ${r.rssWithOverhead.agentMaxRssMiB.toFixed(0)} and ` +
          `${r.rssWithOverhead.serverVmHwmMiB.toFixed(0)} MiB. `
        : "") +
      "Peers' peak RSS is in the steps table.",
    "",
    "## Method",
    "",
    "- The page cache is dropped before the initial sync and before every peer step; peers read the agent's " +
      "image file (what the loop device holds) right after lifeboat's step, restic and borg on stdin as " +
      "`disk0.img`, rsync to a copy (`--inplace`, then `--no-whole-file`). Peer timing includes a final `sync`.",
    ...(r.options.environment
      ? [
          "- Both sides run with " +
            Object.entries(r.options.environment)
              .map(([k, v]) => `\`${k}=${v}\``)
              .join(", ") +
            ", as the agent's wrapper (install.sh) and the service unit of docs/operations.md set them.",
        ]
      : []),
    "- CPU: the agent side is `process.cpuUsage()` of the benchmark process (all threads, including the " +
      "agent's block workers), the server side utime+stime from `/proc/<pid>/stat`.",
    "- Rate-capped fio MiB/s is fio's (2^20 bytes); every MB in the tables is 10^6 bytes.",
    "- Lag is `status().lagSeconds`: the age of the oldest write the replicator has not acknowledged (it " +
      "acknowledges at a checkpoint, once the data is durable), counting dirty blocks not yet read, blocks " +
      "taken for shipping and frames in flight. It is the RPO at that instant: the age of the newest data " +
      "that could be lost. Sampled every 100 ms; the committed PIT is the end of the change step.",
    ...r.notes.map((n) => `- ${n}`),
    "",
    `Run time: ${r.runSeconds} s.`,
    "",
  ];
  return parts.join("\n");
}

/**
 * A step's CPU by thread, which is also by kind of work. In the initial sync, on the
 * agent, the main thread reads the disk, frames and encrypts (TLS) what it
 * sends, and the block workers hash (SHA-256) and compress (zstd); on the
 * server, the main thread decrypts (TLS), decompresses each block to check
 * it and keeps the books (block maps, packs, checkpoints), and the chunk
 * workers hash again (the writer trusts no id it is handed) and encrypt
 * (AES-256-GCM). For the 1% change (`step` "change") the same split, with
 * the work of a change: patches on both sides, each patched chunk read back
 * and stored again by the server's chunk workers.
 */
function cpuSplit(t: CpuSplit, seconds: number, step: "sync" | "change"): string[] {
  const sync = step === "sync";
  const work: Record<"agent" | "server", Record<ThreadRole, string>> = {
    agent: {
      main: sync
        ? "reading (O_DIRECT), framing, TLS encryption, sending"
        : "trace events, dirty set, reading dirty blocks whole (O_DIRECT), SHA-256 of each, patch frames, TLS, sending",
      "block workers": sync
        ? "zero detection, SHA-256, zstd compression"
        : "blocks that go whole: zero detection, SHA-256, zstd compression",
      "chunk workers": "",
      "other threads": "libuv's I/O pool, V8's GC and compiler helpers",
    },
    server: {
      main: sync
        ? "TLS decryption, zstd decompression (to check each block), block maps, packs, checkpoints"
        : "TLS decryption, patches, block maps, packs, checkpoints, the PIT",
      "block workers": "",
      "chunk workers": sync
        ? "SHA-256 again (ids are not trusted), AES-256-GCM encryption"
        : "each patched chunk read back (AES-256-GCM, zstd, SHA-256), then stored again (SHA-256, zstd, AES-256-GCM)",
      "other threads": "libuv's I/O pool (pack reads and writes, fsync), V8's GC and compiler helpers",
    },
  };
  const rows: string[][] = [];
  for (const side of ["agent", "server"] as const)
    for (const role of THREAD_ROLES) {
      const { user, system } = t[side][role];
      const s = user + system;
      if (!work[side][role] && s < 0.05) continue;
      rows.push([
        side,
        role,
        s.toFixed(1),
        system.toFixed(1),
        `${Math.round((s / seconds) * 100)}%`,
        work[side][role],
      ]);
    }
  return [
    sync
      ? "CPU of the initial sync by thread (from /proc/PID/task/TID/stat; the pools name their threads), " +
        "and what each thread does:"
      : "CPU of the change by thread, from the first write to the committed PIT:",
    "",
    table(["side", "threads", "CPU s", "of which system", `of the ${step}'s wall time`, "work"], rows),
  ];
}
