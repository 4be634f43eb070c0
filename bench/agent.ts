/**
 * Agent foundations, measured: O_DIRECT read throughput of a loop device by
 * chunk size, and what the trace tracker costs a workload of small direct
 * writes (the workload's own write rate with and without tracking, and the
 * tracker's CPU time per event).
 *
 *   sudo node dist/bench/agent.js [--size-mib 512] [--writes 40000] [--rounds 3]
 *
 * The loop device is attached with --direct-io=on, so reads and writes reach
 * the backing file's disk rather than its page cache. Root is required.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { DirtySet, DiskReader, TraceTracker, encodeDirtySet } from "../src/agent/index.js";

const { values } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "512" },
    writes: { type: "string", default: "40000" },
    rounds: { type: "string", default: "3" },
  },
});
const sizeMiB = Number(values["size-mib"]);
const writes = Number(values.writes);
const rounds = Number(values.rounds);

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8" }).trim();
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function ddWrites(device: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      "dd",
      ["if=/dev/zero", `of=${device}`, "bs=4k", `count=${writes}`, "oflag=direct", "status=none"],
      { stdio: "ignore" },
    );
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`dd exited ${code}`))));
  });
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("run as root: the benchmark attaches a loop device");
  const dir = mkdtempSync(path.join(os.tmpdir(), "lifeboat-bench-agent-"));
  const image = path.join(dir, "disk.img");
  let device = "";
  try {
    sh("dd", ["if=/dev/urandom", `of=${image}`, "bs=1M", `count=${sizeMiB}`, "status=none"]);
    device = sh("losetup", ["-f", "--show", "--direct-io=on", image]);
    console.log(`device ${device}, ${sizeMiB} MiB, ${os.cpus().length} CPUs, node ${process.version}`);

    console.log("\nO_DIRECT sequential read of the whole device (best of rounds)");
    for (const chunkMiB of [1, 4, 16]) {
      const reader = await DiskReader.open(device, { chunkSize: chunkMiB << 20 });
      let best = Infinity;
      for (let r = 0; r < rounds; r++) {
        best = Math.min(
          best,
          await timed(() => reader.readRanges([{ offset: 0, length: reader.size }], () => {})),
        );
      }
      await reader.close();
      console.log(`  chunk ${chunkMiB} MiB: ${((sizeMiB * 1.048576) / best).toFixed(0)} MB/s`);
    }

    console.log(`\n${writes} direct 4 KiB writes with dd, alternating without and with the tracker`);
    const plain: number[] = [];
    const traced: number[] = [];
    const perEvent: number[] = [];
    let lost = 0;
    for (let r = 0; r < rounds; r++) {
      plain.push(writes / (await timed(() => ddWrites(device))));
      let events = 0;
      const tracker = await TraceTracker.start({
        device,
        instanceName: `lifeboat-bench-${process.pid}`,
        onRanges: (rs) => (events += rs.length),
        onLost: () => lost++,
      });
      const cpu0 = process.cpuUsage();
      traced.push(writes / (await timed(() => ddWrites(device))));
      await tracker.drain();
      const cpu = process.cpuUsage(cpu0);
      await tracker.stop();
      perEvent.push((cpu.user + cpu.system) / Math.max(1, events));
      if (events < writes) console.log(`  round ${r}: only ${events} events for ${writes} writes`);
    }
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    const p = median(plain);
    const t = median(traced);
    console.log(
      `  without tracker: ${p.toFixed(0)} writes/s (median; runs ${plain.map((x) => x.toFixed(0)).join(", ")})`,
    );
    console.log(
      `  with tracker:    ${t.toFixed(0)} writes/s (median; runs ${traced.map((x) => x.toFixed(0)).join(", ")})`,
    );
    console.log(`  workload slowdown: ${(((p - t) / p) * 100).toFixed(1)} %`);
    console.log(`  tracker CPU: ${median(perEvent).toFixed(2)} µs per event; loss signals: ${lost}`);

    dirtySetFigures();
  } finally {
    if (device) execFileSync("losetup", ["-d", device]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Cost of the dirty set for a 1 TiB disk under 1 million scattered 4 KiB writes. */
function dirtySetFigures(): void {
  const n = 1_000_000;
  const set = new DirtySet({ diskSize: 2 ** 40 });
  let x = 12345;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    set.add((x % 2 ** 28) * 4096, 4096, i);
  }
  const addNs = Number(process.hrtime.bigint() - t0) / n;
  const t1 = process.hrtime.bigint();
  const extents = set.extents();
  const extentsMs = Number(process.hrtime.bigint() - t1) / 1e6;
  const file = encodeDirtySet(set, true).length;
  console.log(`\ndirty set, 1 TiB disk, ${n} scattered 4 KiB writes`);
  console.log(
    `  add: ${addNs.toFixed(0)} ns each; extents(): ${extentsMs.toFixed(0)} ms for ${extents.length}`,
  );
  console.log(
    `  memory ~${(set.memoryBytes() / 2 ** 20).toFixed(1)} MiB; dirty ${(set.dirtyBytes() / 2 ** 20).toFixed(0)} MiB; file ${(file / 2 ** 20).toFixed(1)} MiB`,
  );
}

await main();
