// The benchmark's report writer (bench/summary.ts): given the figures of a run, it writes a
// well-formed bench/RESULTS.md through a temporary file. No benchmark runs here.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import type { ImageDescription } from "../../bench/make-image.js";
import type { StepResult } from "../../bench/peers.js";
import {
  STEP_HEADER,
  compare,
  medianSteps,
  stepRows,
  type BenchResults,
  type MachineFacts,
} from "../../bench/report.js";
import type { FioFigures, ReplicationResults } from "../../bench/replication-report.js";
import { writeSummary, type SummaryInput } from "../../bench/summary.js";

const GiB = 2 ** 30;

const machine: MachineFacts = {
  nproc: 2,
  cpuModel: "Test CPU",
  memoryGiB: 4,
  kernel: "6.1.0-test",
  node: "v20.0.0",
  lifeboatCommit: "abc1234",
  tools: { restic: "restic 0.14.0", casync: "casync 2" },
  disk: {
    device: "/dev/vda",
    model: "unknown (virtual disk)",
    rotational: false,
    sizeGiB: 250,
    filesystem: "ext4",
    freeGiB: 50,
  },
};

const image = {
  generatorVersion: 3,
  seed: "seed",
  sizeBytes: 2 * GiB,
  createdAt: "2026-01-01T00:00:00.000Z",
  generationSeconds: 100,
  filesystem: { type: "ext4", blockSize: 4096, blocks: 500000, usedBlocks: 300000, usedPercent: 60 },
  base: { path: "bench/work/base.img", allocatedBytes: 2 * GiB },
  changed: { path: "bench/work/changed.img", allocatedBytes: 2 * GiB, usedPercent: 61 },
  contents: {
    os: { bytes: 4e8, files: 9000, skippedFiles: 0, source: "debootstrap", note: "whole tree" },
    logs: { bytes: 2e8, files: 1 },
    sqlite: { bytes: 1e8, files: 3, rows: 1000 },
    incompressible: { bytes: 2e8, files: 4 },
    duplicates: { bytes: 1e8, files: 4 },
  },
  changes: {
    writes: 5000,
    writeSize: 4096,
    bytesWritten: 5000 * 4096,
    filesTouched: 500,
    fractionOfImageBlocks: 0.01,
    newFile: { path: "srv/new.bin", bytes: 48 * 2 ** 20 },
  },
} as unknown as ImageDescription;

function stepOf(tool: string, phase: StepResult["phase"], seconds: number, repoBytes: number): StepResult {
  return {
    tool,
    phase,
    command: `${tool} ${phase}`,
    seconds,
    syncSeconds: 0.1,
    mbPerSec: Math.round((2 * GiB) / 1e6 / seconds),
    peakRssMiB: 100,
    repoBytes,
    load1: 1,
    ...(phase === "restore" ? { verified: true } : {}),
  };
}

const steps = [
  stepOf("lifeboat", "initial", 10, 600e6),
  stepOf("lifeboat", "changed", 8, 800e6),
  stepOf("lifeboat", "restore", 8, 800e6),
  stepOf("casync", "initial", 20, 700e6),
  stepOf("casync", "changed", 16, 900e6),
  stepOf("casync", "restore", 4, 900e6),
];

const peers: BenchResults = {
  generatedAt: "2026-01-01T00:10:00.000Z",
  options: { sizeBytes: 2 * GiB, only: null, quick: false, cache: "cold" },
  method: [],
  machine,
  image,
  imageGeneratedThisRun: false,
  runSeconds: 200,
  steps,
  comparisons: compare(steps),
  lifeboatStats: null,
  notes: [],
};

const fio: FioFigures = { mbPerSec: 20, iops: 5000, clatP50Us: 150, clatP99Us: 900, clatMeanUs: 190 };
const replication = {
  generatedAt: "2026-01-01T00:15:00.000Z",
  options: {
    sizeBytes: 2 * GiB,
    quick: false,
    rpoSeconds: 45,
    overheadSeconds: 10,
    fioRateMiBps: 20,
    fio: "fio --rate=20m FILE",
    fio4k: "fio --bs=4k FILE",
    peers: false,
    blockSize: 65536,
  },
  machine,
  imageUsedPercent: 60,
  runSeconds: 300,
  initial: {
    seconds: 40,
    pitSeconds: 41,
    pitConsistency: "filesystem",
    mbPerSec: 53.7,
    load1: 1,
    bytesRead: 2 * GiB,
    bytesSent: 7e8,
    repoBytes: 7e8,
    agentCpuSeconds: 10,
    serverCpuSeconds: 20,
  },
  incremental: {
    writes: 5000,
    filesTouched: 500,
    bytesWritten: 2e7,
    writeSeconds: 3,
    ackSeconds: 4,
    pitSeconds: 5,
    load1: 1,
    pitConsistency: "filesystem",
    totalSeconds: 8,
    bytesSent: 2.1e7,
    sentPerWritten: 1.05,
    framesSent: 100,
    windowFramesMax: 50,
    windowFullShare: 0.1,
    repoDeltaBytes: 2e7,
    agentCpuSeconds: 1,
    serverCpuSeconds: 2,
  },
  peers: [],
  comparisons: [],
  rpo: {
    seconds: 45,
    load1: 1,
    samples: 450,
    lagP50: 0.5,
    lagP95: 1.5,
    lagP99: 2,
    lagMax: 3,
    workload: fio,
    bytesSent: 9e8,
    drainSeconds: 1,
    agentCpuSeconds: 9,
    agentCpuPercentOfCore: 20,
    serverCpuSeconds: 20,
    serverCpuPercentOfCore: 44,
    traceLosses: 0,
    rescans: 0,
  },
  overhead: {
    roundSeconds: 10,
    rounds: 3,
    fileMiB: 300,
    heldMbps: 0.01,
    withRounds: [fio, fio, fio],
    heldRounds: [fio, fio, fio],
    withoutRounds: [fio, fio, fio],
    with: { ...fio, iops: 4500 },
    held: { ...fio, iops: 4900 },
    without: fio,
    load1With: 1,
    load1Held: 1,
    load1Without: 1,
    iopsCostPercent: 10,
    latencyMeanCostPercent: 11.1,
    latencyP99CostPercent: 5,
    heldIopsCostPercent: 2,
    heldLatencyMeanCostPercent: 2.1,
    heldLatencyP99CostPercent: 1,
    agentCpuPercentOfCore: 30,
    serverCpuPercentOfCore: 40,
    heldAgentCpuPercentOfCore: 8,
    traceLosses: 0,
  },
  rss: { agentMaxRssMiB: 300, serverVmHwmMiB: 400, beforeAgentMiB: 80 },
  counters: {},
  repoBytes: 7e8,
  notes: [],
} satisfies ReplicationResults;

void test("the report writer turns a run's figures into a well-formed RESULTS.md", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "lifeboat-bench-summary-"));
  try {
    const file = path.join(dir, "RESULTS.md");
    const input: SummaryInput = {
      generatedAt: "2026-01-01T00:20:00.000Z",
      command: "npm run bench",
      runSeconds: 800,
      sectionSeconds: { "store ingest and peers": 200, replication: 300 },
      machine,
      peers,
      replication,
      launch: null,
      detailsDir: "bench/results",
      apiMarkdown: "# API load benchmark\n\n| database | p99 ms |\n|---|---|\n| sqlite | 15.3 |\n",
      notes: ["a note"],
    };
    writeSummary(file, input);
    assert.deepEqual(readdirSync(dir), ["RESULTS.md"], "written through a temporary file that is renamed");
    const md = readFileSync(file, "utf8");
    assert.match(md, /^# Lifeboat benchmark results, 2026-01-01 00:20 UTC\n/);
    for (const heading of [
      "## Machine",
      "## Lifeboat : peer",
      "## Store ingest, dedup and restore",
      "## Replication",
      "## RPO under load",
      "## Trace-mode overhead",
      "## API load (control plane)",
      "## How to reproduce",
      "## Notes",
    ])
      assert.ok(md.includes(`\n${heading}`), `missing ${heading}`);
    assert.ok(!md.includes("# API load benchmark"), "the API section's own title is dropped");
    // Every markdown table: a header, a separator with as many cells, rows with as many cells.
    const lines = md.split("\n");
    for (let i = 0; i < lines.length; i++) {
      if (!lines[i]!.startsWith("|") || (i > 0 && lines[i - 1]!.startsWith("|"))) continue;
      const cells = (l: string) => l.split(" | ").length;
      const width = cells(lines[i]!);
      assert.match(lines[i + 1]!, /^\|( ?-+ ?\|)+$/, `table at line ${i + 1} has a separator`);
      for (let j = i + 2; j < lines.length && lines[j]!.startsWith("|"); j++)
        assert.equal(cells(lines[j]!), width, `row ${j + 1} has as many cells as its header`);
    }
    // Ratios are peer ÷ lifeboat: casync took 20 s for the first backup, lifeboat 10 s.
    const row = lines.find((l) => l.startsWith("| store ingest, first backup"));
    assert.equal(row, "| store ingest, first backup (seconds) | 2.00× |");
    assert.ok(lines.some((l) => l.startsWith("| lag p50 s | p95 s |")));
    assert.ok(md.includes("| 0.50 | 1.50 | 2.00 | 3.00 |"), "RPO percentiles");
    assert.ok(md.includes("IOPS +10.0%"), "trace-mode IOPS overhead");
    assert.ok(
      md.includes("Cost of tracking alone (held vs no agent; positive = worse with the agent): IOPS +2.0%"),
      "tracking alone",
    );
    assert.ok(
      md.includes("agent side 300 MiB (the benchmark process, which held 80 MiB before the agent was made)"),
      "peak RSS with what the process held before the agent",
    );
    assert.ok(!existsSync(file + ".tmp"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test("several rounds give each step its median round's figures and every round's seconds", () => {
  const round = (f: number) => [
    stepOf("lifeboat", "initial", 10 * f, 600e6 + f),
    stepOf("restic", "initial", 12, 650e6),
  ];
  const m = medianSteps([round(3), round(1), round(2)]);
  assert.equal(m.length, 2);
  assert.equal(m[0]!.seconds, 20);
  assert.equal(m[0]!.repoBytes, 600e6 + 2, "the figures of the median round, not a mix");
  assert.deepEqual(m[0]!.roundSeconds, [30, 10, 20]);
  assert.deepEqual(m[1]!.roundSeconds, [12, 12, 12]);
  // An even count takes the lower middle; one round leaves the steps as they are.
  assert.equal(medianSteps([round(1), round(4)])[0]!.seconds, 10);
  assert.equal(medianSteps([round(1)])[0]!.roundSeconds, undefined);
  const row = stepRows(m)[0]!;
  assert.equal(row.length, STEP_HEADER.length);
  assert.equal(row.at(-1), "30.0, 10.0, 20.0");
});
