/**
 * The replication benchmark: the agent's replication engine (in this
 * process) against a real `lifeboat server start` (a child process, control
 * plane and embedded replicator) over loopback TLS, on a copy of the
 * benchmark's base image attached as a loop device and mounted, with restic,
 * borg and rsync backing up the same image file after each step.
 *
 *   sudo UV_THREADPOOL_SIZE=16 GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576 node dist/bench/replication.js [--quick | --size-gib N] [--rpo-seconds S]
 *                                       [--no-peers] [--results-dir DIR] [--keep]
 *
 * UV_THREADPOOL_SIZE=16 as the agent's unit sets it, and GLIBC_TUNABLES as its wrapper does (run.js
 * passes both): the agent runs in this process, whose libuv pool and allocator are set up before any
 * line of it runs. The server, a child, inherits them (the
 * service unit of docs/operations.md sets the same).
 *
 * Steps, in one run: initial sync (time until every block is acknowledged,
 * then until a first PIT is committed) and the peers' first backups; ~1%
 * scattered 4 KiB writes through the filesystem, time from their end until a
 * PIT holding them is committed, and the peers' second backups; lag under a
 * steady 20 MiB/s random-write fio workload (RPO); the trace-mode overhead:
 * uncapped 4 KiB random writes, IOPS and latency on the replicated disk with
 * the agent shipping, with its shipping held, and with no agent, rotated;
 * CPU and peak RSS of both sides. `--no-peers` leaves
 * the peers out (run.js does: its peers section backs up the same image).
 *
 * A full-size run (2 GiB, default durations) writes bench/results/replication.{json,md};
 * other runs write bench/work/results/; `--results-dir` overrides both.
 */
import { mkdirSync, readFileSync, renameSync, rmdirSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { loadavg } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { Replication } from "../src/agent/replication.js";
import type { AgentStatus } from "../src/agent/status.js";
import { createLogger } from "../src/base/index.js";
import { scatterArgs } from "./fill.js";
import {
  FIO_4K_COMMAND,
  fioCommand,
  fioLayout,
  fioRandom4k,
  fioRandomWrites,
  requireFio,
  type FioResult,
} from "./fio.js";
import { ensureImages, sizeFromArgs } from "./make-image.js";
import { makeSecrets, requireTimeBinary, round } from "./peers.js";
import { machineFacts } from "./report.js";
import {
  THREAD_ROLES,
  renderReplication,
  type CpuSplit,
  type FioFigures,
  type ReplicationResults,
} from "./replication-report.js";
import { dropCachesAsync, replicationPeers, spawnAsync } from "./replication-peers.js";
import { peakRssMiB, processCpuSeconds, startServerChild, threadCpuSeconds } from "./replication-site.js";
import {
  GiB,
  Interrupted,
  RESULTS,
  WORK,
  detachLoops,
  dirBytes,
  log,
  out,
  removeTree,
  requireRoot,
  run,
  since,
  trapInterrupts,
  unmountAll,
} from "./sys.js";

const SEED = "lifeboat-bench-replication-v1";
const BLOCK_SIZE = 64 * 1024;
const FIO_RATE_MIB = 20;
/** Rounds of the trace-overhead workload, with the agent and without. */
const OVERHEAD_ROUNDS = 5;
/** Busy share of the CPUs under which the machine counts as quiet before an overhead round (quiet()). */
const QUIET_BUSY = 0.1;
/** The longest quiet() waits (a machine that never calms down still gets measured). */
const QUIET_MAX_MS = 20_000;
/** The bandwidth cap (Mbit/s) that holds the agent's shipping in the tracing-only overhead rounds. */
const HELD_MBPS = 0.01;
/** The RPO run's length by default: two minutes of steady writes, as the RPO target is stated. */
const RPO_SECONDS = 120;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Options {
  sizeBytes: number;
  quick: boolean;
  keep: boolean;
  rpoSeconds: number;
  /** Seconds of each trace-overhead round. */
  overheadSeconds: number;
  peers: boolean;
  resultsDir: string | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      "size-gib": { type: "string" },
      quick: { type: "boolean" },
      keep: { type: "boolean" },
      "rpo-seconds": { type: "string" },
      "no-peers": { type: "boolean" },
      "results-dir": { type: "string" },
    },
  });
  const quick = values.quick ?? false;
  const rpoSeconds = Number(values["rpo-seconds"] ?? (quick ? 20 : RPO_SECONDS));
  if (!(rpoSeconds >= 5)) throw new Error(`--rpo-seconds must be at least 5, got ${values["rpo-seconds"]}`);
  return {
    sizeBytes: sizeFromArgs(values),
    quick,
    keep: values.keep ?? false,
    rpoSeconds,
    overheadSeconds: quick ? 5 : 10,
    peers: !(values["no-peers"] ?? false),
    resultsDir: values["results-dir"],
  };
}

/** CPU seconds of both sides and wall time since a mark. */
class Meter {
  private readonly wall = performance.now();
  private readonly agent = process.cpuUsage();
  private readonly server: number;
  private readonly agentThreads = threadCpuSeconds(process.pid);
  private readonly serverThreads: ReturnType<typeof threadCpuSeconds>;
  constructor(private readonly serverPid: number) {
    this.server = processCpuSeconds(serverPid);
    this.serverThreads = threadCpuSeconds(serverPid);
  }
  /** CPU seconds by thread role since the meter started, on each side. */
  threads(): CpuSplit {
    type Reading = ReturnType<typeof threadCpuSeconds>;
    const delta = (now: Reading, then: Reading) =>
      Object.fromEntries(
        THREAD_ROLES.map((r) => [
          r,
          { user: round(now[r].user - then[r].user, 2), system: round(now[r].system - then[r].system, 2) },
        ]),
      ) as CpuSplit["agent"];
    return {
      agent: delta(threadCpuSeconds(process.pid), this.agentThreads),
      server: delta(threadCpuSeconds(this.serverPid), this.serverThreads),
    };
  }
  read(): { seconds: number; agentCpuSeconds: number; serverCpuSeconds: number } {
    const a = process.cpuUsage(this.agent);
    return {
      seconds: round(since(this.wall), 2),
      agentCpuSeconds: round((a.user + a.system) / 1e6, 2),
      serverCpuSeconds: round(processCpuSeconds(this.serverPid) - this.server, 2),
    };
  }
}

async function until(what: string, fn: () => boolean, timeoutMs: number, everyMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Every block sent has been acknowledged and nothing is dirty. */
function caughtUp(s: AgentStatus | null): boolean {
  return s !== null && s.state === "CONTINUOUS" && s.backlogBytes === 0;
}

/** Busy share of every CPU (0..1) over `ms`, from /proc/stat. */
async function cpuBusy(ms: number): Promise<number> {
  const sample = (): { busy: number; all: number } => {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const all = f.reduce((a, b) => a + b, 0);
    return { busy: all - (f[3] ?? 0) - (f[4] ?? 0), all }; // idle and iowait are not busy
  };
  const a = sample();
  await sleep(ms);
  const b = sample();
  return (b.busy - a.busy) / Math.max(1, b.all - a.all);
}

/**
 * Waits until the machine is quiet before a timed round: written pages flushed
 * (`sync`), and the CPUs under QUIET_BUSY for two samples in a row (the
 * replicator stores and checkpoints what a catch-up sent for a while after
 * the agent sees it acknowledged, and its garbage collection follows). A
 * round that started in that wake measured the wake, not the tracking.
 * Returns the seconds waited.
 */
async function quiet(): Promise<number> {
  const start = performance.now();
  await spawnAsync("sync", []);
  let calm = 0;
  while (calm < 2 && performance.now() - start < QUIET_MAX_MS) {
    calm = (await cpuBusy(250)) < QUIET_BUSY ? calm + 1 : 0;
  }
  return round((performance.now() - start) / 1000, 1);
}

/** 1-minute load average: other work on the machine slows every step. */
function load1(): number {
  return round(loadavg()[0] ?? 0, 1);
}

function quantile(sorted: readonly number[], q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function fioFigures(r: FioResult): FioFigures {
  return {
    mbPerSec: round(r.mbPerSec, 1),
    iops: Math.round(r.iops),
    clatP50Us: Math.round(r.clatP50Us),
    clatP99Us: Math.round(r.clatP99Us),
    clatMeanUs: Math.round(r.clatMeanUs),
  };
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** Median of each figure over rounds. */
function medianFigures(rounds: readonly FioFigures[]): FioFigures {
  const m = (k: keyof FioFigures): number => median(rounds.map((r) => r[k]));
  return {
    mbPerSec: round(m("mbPerSec"), 1),
    iops: Math.round(m("iops")),
    clatP50Us: Math.round(m("clatP50Us")),
    clatP99Us: Math.round(m("clatP99Us")),
    clatMeanUs: Math.round(m("clatMeanUs")),
  };
}

/**
 * With a FILE, a sample every 20 ms until `stop()` writes them there, one line each: ms since the
 * start, backlog bytes, bytes sent, frames acknowledged, frames and bytes in flight (sent, not yet
 * acknowledged), lag in seconds. Shows where the agent waits: on the disk, the window or the replicator.
 */
function timeline(agent: Replication, file: string | undefined): { stop(): void } {
  if (!file) return { stop() {} };
  const rows: string[] = [];
  const t0 = Date.now();
  const sent0 = agent.counters.bytesSent;
  const acked0 = agent.session.lastAcked;
  const sampler = setInterval(() => {
    const st = agent.status();
    const { frames, bytes } = agent.session.inFlight;
    const row = [Date.now() - t0, st?.backlogBytes ?? -1, agent.counters.bytesSent - sent0];
    rows.push([...row, agent.session.lastAcked - acked0, frames, bytes, st?.lagSeconds ?? -1].join(" "));
  }, 20);
  return {
    stop() {
      clearInterval(sampler);
      writeFileSync(file, `${rows.join("\n")}\n`);
    },
  };
}

/** How much worse `with` is than `without`, in %: positive when the agent costs the workload. */
function costPercent(withAgent: number, without: number, higherIsBetter: boolean): number {
  const d = higherIsBetter ? without - withAgent : withAgent - without;
  return round((d / without) * 100, 1);
}

async function measure(opts: Options, device: string, mnt: string, image: string, work: string) {
  const notes: string[] = [];
  const server = await startServerChild(path.join(work, "server"));
  let rep: Replication | undefined;
  try {
    const who = await server.register("bench-replication");
    const peers = opts.peers
      ? replicationPeers(path.join(work, "repos"), makeSecrets(path.join(work, "secrets")), opts.sizeBytes)
      : null;
    const newAgent = (): Replication =>
      new Replication({
        serverId: who.serverId,
        hostname: "bench-replication",
        version: "bench",
        disks: [{ index: 0, path: device, kind: "device", id: "bench-loop" }],
        blockSize: BLOCK_SIZE,
        settings: {
          pitIntervalSeconds: 0,
          freezeCapMs: 5000,
          lagThresholdSeconds: 30,
          stallSeconds: 300,
          bandwidthMbps: 0,
          tracker: "trace",
        },
        connect: () => server.connect(who),
        logger: createLogger(process.env.LIFEBOAT_BENCH_LOG ?? "silent", "agent"),
      });
    // What the benchmark process holds before any agent exists (node, the harness, the modules loaded):
    // the agent side's peak below counts it too.
    const beforeAgentMiB = round(process.memoryUsage().rss / 1048576, 1);
    // The overhead step stops the agent for its rounds without one and starts a new one after.
    let agent = newAgent();
    rep = agent;

    // 1. Initial sync.
    log("initial sync");
    await dropCachesAsync();
    const loadBefore = load1();
    let meter = new Meter(server.pid);
    await agent.start();
    const syncTimeline = timeline(agent, process.env.LIFEBOAT_BENCH_TIMELINE_SYNC);
    let sawSync = false;
    await until(
      "the initial sync",
      () => {
        const s = agent.status();
        if (s?.state === "INITIAL_SYNC") sawSync = true;
        return sawSync && caughtUp(s);
      },
      3600_000,
    );
    const synced = meter.read();
    syncTimeline.stop();
    const threads = meter.threads();
    const firstPoint = await agent.requestPoint();
    const withPit = meter.read();
    const initial = {
      ...synced,
      load1: loadBefore,
      pitSeconds: withPit.seconds,
      pitConsistency: firstPoint.consistency,
      mbPerSec: round(opts.sizeBytes / 1e6 / synced.seconds, 1),
      bytesRead: agent.counters.bytesRead,
      bytesSent: agent.counters.bytesSent,
      repoBytes: dirBytes(server.repo),
      threads,
    };
    log(
      `initial sync: ${initial.seconds} s (${initial.mbPerSec} MB/s), PIT after ${initial.pitSeconds} s; ` +
        `sent ${(initial.bytesSent / 1e6).toFixed(1)} MB; CPU agent ${initial.agentCpuSeconds} s, server ${initial.serverCpuSeconds} s`,
    );
    const peerSteps = peers ? await peers.backup("initial", image) : [];

    // 2. Incremental: scattered 4 KiB writes through the filesystem, then a PIT.
    log("incremental: scattered 4 KiB writes");
    const sent0 = agent.counters.bytesSent;
    const seq0 = agent.session.lastAcked;
    const repo0 = dirBytes(server.repo);
    meter = new Meter(server.pid);
    // LIFEBOAT_BENCH_AGENT_PROF=FILE: a V8 CPU profile of this process's main thread (the agent) for the change step.
    const profiler = process.env.LIFEBOAT_BENCH_AGENT_PROF ? new Session() : undefined;
    if (profiler) {
      profiler.connect();
      await profiler.post("Profiler.enable");
      await profiler.post("Profiler.start");
    }
    const changeTimeline = timeline(agent, process.env.LIFEBOAT_BENCH_TIMELINE);
    const scatter = JSON.parse(
      (await spawnAsync(process.execPath, scatterArgs(mnt, opts.sizeBytes, SEED))).stdout,
    ) as { writes: number; writeSize: number; filesTouched: number };
    const writesDone = meter.read();
    const pitMeter = new Meter(server.pid);
    // How full the wire window runs while the change is shipped: frames sent and not yet acknowledged.
    const window: number[] = [];
    const windowSampler = setInterval(() => window.push(agent.session.inFlight.frames), 20);
    let acked: ReturnType<Meter["read"]>;
    let point: Awaited<ReturnType<Replication["requestPoint"]>>;
    try {
      // The tracker reads its events every ~100 ms: the change counts as acknowledged only once
      // the agent has seen it (a backlog, or sent bytes for most of it) and nothing is left.
      let sawBacklog = false;
      const bytesWrittenNow = scatter.writes * scatter.writeSize;
      await until(
        "the change to be acknowledged",
        () => {
          const st = agent.status();
          if ((st?.backlogBytes ?? 0) > 0) sawBacklog = true;
          const sentEnough = agent.counters.bytesSent - sent0 >= 0.9 * bytesWrittenNow;
          return (sawBacklog || sentEnough) && caughtUp(st);
        },
        600_000,
        20,
      );
      acked = pitMeter.read();
      point = await agent.requestPoint();
    } finally {
      clearInterval(windowSampler);
    }
    const pit = pitMeter.read();
    if (profiler) {
      const { profile } = await profiler.post("Profiler.stop");
      writeFileSync(process.env.LIFEBOAT_BENCH_AGENT_PROF!, JSON.stringify(profile));
      profiler.disconnect();
    }
    changeTimeline.stop();
    const windowMax = Math.max(0, ...window);
    const all = meter.read();
    const changeThreads = meter.threads();
    const bytesWritten = scatter.writes * scatter.writeSize;
    const bytesSent = agent.counters.bytesSent - sent0;
    const incremental = {
      writes: scatter.writes,
      filesTouched: scatter.filesTouched,
      bytesWritten,
      writeSeconds: writesDone.seconds,
      ackSeconds: acked.seconds,
      pitSeconds: pit.seconds,
      load1: load1(),
      pitConsistency: point.consistency,
      totalSeconds: all.seconds,
      bytesSent,
      sentPerWritten: round(bytesSent / bytesWritten, 2),
      framesSent: agent.session.lastAcked - seq0,
      windowFramesMax: windowMax,
      windowFullShare: round(window.filter((f) => f >= windowMax).length / Math.max(1, window.length), 2),
      repoDeltaBytes: dirBytes(server.repo) - repo0,
      agentCpuSeconds: all.agentCpuSeconds,
      serverCpuSeconds: all.serverCpuSeconds,
      threads: changeThreads,
    };
    log(
      `incremental: ${scatter.writes} writes in ${incremental.writeSeconds} s; PIT ${incremental.pitSeconds} s after ` +
        `the last; sent ${(bytesSent / 1e6).toFixed(1)} MB for ${(bytesWritten / 1e6).toFixed(1)} MB written`,
    );
    if (peers) peerSteps.push(...(await peers.backup("changed", image)));

    // 3. RPO: lag under a steady rate-capped random-write workload.
    const fioFile = path.join(mnt, "fio-workload.dat");
    const fioMiB = Math.max(16, Math.round((0.15 * opts.sizeBytes) / (1024 * 1024)));
    log(
      `RPO: laying out a ${fioMiB} MiB file, then ${opts.rpoSeconds} s of random writes at ${FIO_RATE_MIB} MiB/s`,
    );
    await fioLayout(fioFile, fioMiB);
    await until("the agent to ship the fio file", () => caughtUp(agent.status()), 600_000);
    const losses0 = { ...agent.counters };
    const lags: number[] = [];
    const sampler = setInterval(() => {
      const s = agent.status();
      if (s) lags.push(s.lagSeconds);
    }, 100);
    const rpoLoad = load1();
    meter = new Meter(server.pid);
    const sentBeforeRpo = agent.counters.bytesSent;
    let rated: FioResult;
    try {
      rated = await fioRandomWrites(fioFile, fioMiB, opts.rpoSeconds, FIO_RATE_MIB);
    } finally {
      clearInterval(sampler);
    }
    const rpoCpu = meter.read();
    const drainStart = performance.now();
    await until("the agent to catch up after the workload", () => caughtUp(agent.status()), 600_000);
    const drainSeconds = round(since(drainStart), 2);
    lags.sort((a, b) => a - b);
    const rpo = {
      seconds: opts.rpoSeconds,
      load1: rpoLoad,
      samples: lags.length,
      lagP50: round(quantile(lags, 0.5), 3),
      lagP95: round(quantile(lags, 0.95), 3),
      lagP99: round(quantile(lags, 0.99), 3),
      lagMax: round(lags.at(-1) ?? NaN, 3),
      workload: fioFigures(rated),
      bytesSent: agent.counters.bytesSent - sentBeforeRpo,
      drainSeconds,
      agentCpuSeconds: rpoCpu.agentCpuSeconds,
      agentCpuPercentOfCore: round((rpoCpu.agentCpuSeconds / rpoCpu.seconds) * 100, 1),
      serverCpuSeconds: rpoCpu.serverCpuSeconds,
      serverCpuPercentOfCore: round((rpoCpu.serverCpuSeconds / rpoCpu.seconds) * 100, 1),
      traceLosses: agent.counters.traceLosses - losses0.traceLosses,
      rescans: agent.counters.rescans - losses0.rescans,
    };
    log(`RPO: lag p50 ${rpo.lagP50} s, p95 ${rpo.lagP95} s, max ${rpo.lagMax} s over ${lags.length} samples`);

    // Peak RSS of one agent through the sync, the change and the RPO step: the overhead step starts
    // new agents in this process, and what an old one left behind would count for the new.
    const rss = {
      agentMaxRssMiB: round(process.resourceUsage().maxRSS / 1024, 1),
      serverVmHwmMiB: round(peakRssMiB(server.pid), 1),
      beforeAgentMiB,
    };

    // 4. Trace-mode overhead: uncapped 4 KiB random writes on the file of the RPO step, in three
    // kinds of round, rotated: with the agent tracing and shipping them; with the agent tracing while
    // its shipping is held (a bandwidth cap of HELD_MBPS: it still reads the trace and keeps its
    // dirty set, and sends a frame a second at most); and with no agent (stopped for the round, a new
    // one started after it, which rescans the disk). Every kind writes the same file of the same
    // disk: two disks, even two copies of one image on one host filesystem, differed here by 10-20%
    // in these IOPS with no agent at all, more than the cost to measure. Each round starts on a
    // quiet machine, with the agent caught up.
    log(
      `trace overhead: ${OVERHEAD_ROUNDS} × ${opts.overheadSeconds} s of 4 KiB random writes with the agent ` +
        "shipping, with its shipping held, and with no agent, rotated",
    );
    const rounds = { ship: [] as FioFigures[], held: [] as FioFigures[], off: [] as FioFigures[] };
    const loads = { ship: [] as number[], held: [] as number[], off: [] as number[] };
    const quietWaits: number[] = [];
    const restartSeconds: number[] = [];
    // Trace losses of the agents stopped for the rounds without one.
    let retiredLosses = 0;
    const losses1 = agent.counters.traceLosses;
    const cpu = {
      ship: { seconds: 0, agentCpuSeconds: 0, serverCpuSeconds: 0 },
      held: { seconds: 0, agentCpuSeconds: 0, serverCpuSeconds: 0 },
    };
    const kinds = ["ship", "held", "off"] as const;
    for (let r = 0; r < OVERHEAD_ROUNDS; r++) {
      for (let k = 0; k < kinds.length; k++) {
        const kind = kinds[(k + r) % kinds.length]!;
        if (kind === "off") {
          retiredLosses += agent.counters.traceLosses;
          await agent.stop();
          rep = undefined;
        }
        quietWaits.push(await quiet());
        loads[kind].push(load1());
        if (kind === "off") {
          rounds.off.push(fioFigures(await fioRandom4k(fioFile, fioMiB, opts.overheadSeconds)));
          const restart = performance.now();
          agent = newAgent();
          rep = agent;
          await agent.start();
          await until(
            "a new agent to catch up after a round without one",
            () => caughtUp(agent.status()),
            600_000,
          );
          restartSeconds.push(round(since(restart), 1));
          continue;
        }
        if (kind === "held") agent.setBandwidth(HELD_MBPS);
        const m = new Meter(server.pid);
        try {
          rounds[kind].push(fioFigures(await fioRandom4k(fioFile, fioMiB, opts.overheadSeconds)));
        } finally {
          agent.setBandwidth(0);
        }
        const used = m.read();
        const c = cpu[kind];
        c.seconds += used.seconds;
        c.agentCpuSeconds += used.agentCpuSeconds;
        c.serverCpuSeconds += used.serverCpuSeconds;
        await until("the agent to catch up after an overhead round", () => caughtUp(agent.status()), 600_000);
      }
    }
    const overheadLosses = retiredLosses + agent.counters.traceLosses - losses1;
    const finalPoint = await agent.requestPoint();
    const counters = { ...agent.counters };
    await agent.stop();
    rep = undefined;
    const meanLoad = (xs: number[]): number =>
      round(xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length), 1);
    const ship = medianFigures(rounds.ship);
    const held = medianFigures(rounds.held);
    const wo = medianFigures(rounds.off);
    const percentOfCore = (used: number, of: number): number => round((used / Math.max(0.001, of)) * 100, 1);
    const overhead = {
      roundSeconds: opts.overheadSeconds,
      rounds: OVERHEAD_ROUNDS,
      fileMiB: fioMiB,
      heldMbps: HELD_MBPS,
      withRounds: rounds.ship,
      heldRounds: rounds.held,
      withoutRounds: rounds.off,
      with: ship,
      held,
      without: wo,
      load1With: meanLoad(loads.ship),
      load1Held: meanLoad(loads.held),
      load1Without: meanLoad(loads.off),
      iopsCostPercent: costPercent(ship.iops, wo.iops, true),
      latencyMeanCostPercent: costPercent(ship.clatMeanUs, wo.clatMeanUs, false),
      latencyP99CostPercent: costPercent(ship.clatP99Us, wo.clatP99Us, false),
      heldIopsCostPercent: costPercent(held.iops, wo.iops, true),
      heldLatencyMeanCostPercent: costPercent(held.clatMeanUs, wo.clatMeanUs, false),
      heldLatencyP99CostPercent: costPercent(held.clatP99Us, wo.clatP99Us, false),
      agentCpuPercentOfCore: percentOfCore(cpu.ship.agentCpuSeconds, cpu.ship.seconds),
      serverCpuPercentOfCore: percentOfCore(cpu.ship.serverCpuSeconds, cpu.ship.seconds),
      heldAgentCpuPercentOfCore: percentOfCore(cpu.held.agentCpuSeconds, cpu.held.seconds),
      traceLosses: overheadLosses,
      quietWaits,
      restartSeconds,
    };
    log(
      `trace overhead: ${ship.iops} IOPS with the agent shipping, ${held.iops} tracing only, ${wo.iops} without ` +
        `(${overhead.iopsCostPercent}% and ${overhead.heldIopsCostPercent}% fewer)`,
    );
    const traceLosses = retiredLosses + counters.traceLosses;
    if (traceLosses > 0)
      notes.push(`The trackers reported ${traceLosses} trace losses (each one costs a rescan).`);
    if (!finalPoint.pitId) notes.push("The last PIT's id was lost to a reconnect.");
    const rssWithOverhead = {
      agentMaxRssMiB: round(process.resourceUsage().maxRSS / 1024, 1),
      serverVmHwmMiB: round(peakRssMiB(server.pid), 1),
    };
    return {
      initial,
      incremental,
      peerSteps,
      rpo,
      overhead,
      rss,
      rssWithOverhead,
      counters,
      repoBytes: dirBytes(server.repo),
      notes,
    };
  } finally {
    await rep?.stop().catch(() => undefined);
    await server.stop();
  }
}

/** Peer seconds ÷ lifeboat seconds for a step: above 1, lifeboat is faster. */
function ratios(
  lifeboat: { initial: number; changed: number },
  steps: ReplicationResults["peers"],
): ReplicationResults["comparisons"] {
  return steps.map((s) => {
    const lb = s.phase === "initial" ? lifeboat.initial : lifeboat.changed;
    return {
      phase: s.phase,
      peer: s.tool,
      lifeboatSeconds: lb,
      peerSeconds: s.seconds,
      speedup: round(s.seconds / lb, 2),
    };
  });
}

async function main(): Promise<number> {
  const opts = parseOptions();
  requireRoot("The replication benchmark");
  trapInterrupts();
  requireTimeBinary();
  requireFio();
  const start = performance.now();
  const images = ensureImages(opts.sizeBytes);
  const work = path.join(WORK, "replication");
  // Leftovers of an interrupted run: its mount, then its loop device.
  unmountAll(work);
  detachLoops(path.join(work, "disk.img"));
  removeTree(work);
  mkdirSync(work, { recursive: true });
  const image = path.join(work, "disk.img");
  log(`copying ${images.base} for the agent's disk`);
  run("cp", ["--sparse=never", images.base, image]);
  // --direct-io: the loop device reads and writes the backing file's disk, not a second page cache.
  const device = out("losetup", ["--find", "--show", "--direct-io=on", image]);
  const mnt = path.join(work, "mnt");
  mkdirSync(mnt);
  let figures: Awaited<ReturnType<typeof measure>>;
  try {
    run("mount", ["-o", "noatime", device, mnt]);
    try {
      figures = await measure(opts, device, mnt, image, work);
    } finally {
      run("sync", [], { cleanup: true });
      unmountAll(mnt);
    }
  } finally {
    run("losetup", ["-d", device], { allowFail: true, cleanup: true });
    rmdirSync(mnt);
    if (opts.keep) log(`server data directory and peer repositories kept in ${work}`);
    else removeTree(work);
  }

  const results: ReplicationResults = {
    generatedAt: new Date().toISOString(),
    options: {
      sizeBytes: opts.sizeBytes,
      quick: opts.quick,
      rpoSeconds: opts.rpoSeconds,
      overheadSeconds: opts.overheadSeconds,
      fioRateMiBps: FIO_RATE_MIB,
      fio: fioCommand(FIO_RATE_MIB),
      fio4k: FIO_4K_COMMAND,
      peers: opts.peers,
      blockSize: BLOCK_SIZE,
      environment: Object.fromEntries(
        ["UV_THREADPOOL_SIZE", "GLIBC_TUNABLES"].flatMap((k) => {
          const v = process.env[k];
          return v === undefined ? [] : [[k, v]];
        }),
      ),
    },
    machine: machineFacts(),
    imageUsedPercent: images.description.filesystem.usedPercent,
    runSeconds: Math.round(since(start)),
    initial: figures.initial,
    incremental: figures.incremental,
    peers: figures.peerSteps,
    comparisons: ratios(
      { initial: figures.initial.seconds, changed: figures.incremental.pitSeconds },
      figures.peerSteps,
    ),
    rpo: figures.rpo,
    overhead: figures.overhead,
    rss: figures.rss,
    rssWithOverhead: figures.rssWithOverhead,
    counters: figures.counters,
    repoBytes: figures.repoBytes,
    notes: figures.notes,
  };
  const full = opts.sizeBytes === 2 * GiB && !opts.quick && opts.rpoSeconds === RPO_SECONDS && opts.peers;
  const dir = opts.resultsDir ?? (full ? RESULTS : path.join(WORK, "results"));
  mkdirSync(dir, { recursive: true });
  const markdown = renderReplication(results);
  for (const [name, text] of [
    ["replication.json", JSON.stringify(results, null, 2) + "\n"],
    ["replication.md", markdown],
  ] as const) {
    writeFileSync(path.join(dir, name + ".tmp"), text);
    renameSync(path.join(dir, name + ".tmp"), path.join(dir, name));
  }
  console.log(markdown);
  log(`results written to ${path.relative(process.cwd(), dir) || dir}/replication.{json,md}`);
  return 0;
}

try {
  process.exitCode = await main();
} catch (err) {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exitCode = err instanceof Interrupted ? 130 : 1;
}
// Worker threads or sockets left by a failed step must not keep the process alive.
process.exit();
