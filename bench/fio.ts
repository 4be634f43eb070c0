/**
 * fio as the replication benchmark's write workload: direct random writes of
 * 4–64 KiB into one preallocated file on the mounted filesystem, optionally
 * rate-capped. Runs asynchronously (the agent shares this process's event loop).
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

export interface FioResult {
  /** Bytes written per second, 1 MB = 10^6 bytes. */
  mbPerSec: number;
  iops: number;
  /** Completion latency percentiles of the writes, microseconds. */
  clatP50Us: number;
  clatP99Us: number;
  /** Mean completion latency, microseconds. */
  clatMeanUs: number;
  seconds: number;
}

export function requireFio(): void {
  if (!existsSync("/usr/bin/fio"))
    throw new Error("fio is missing (the write workload): apt-get install fio");
}

/** Writes the whole file once, sequentially (fio lays it out before its timed runs otherwise). */
export function fioLayout(file: string, sizeMiB: number): Promise<FioResult> {
  return fio(["--name=layout", `--filename=${file}`, `--size=${sizeMiB}m`, "--rw=write", "--bs=1m"]);
}

/** Random writes for `seconds`; `rateMBps` caps them (fio's --rate, MiB/s). */
export function fioRandomWrites(
  file: string,
  sizeMiB: number,
  seconds: number,
  rateMBps?: number,
): Promise<FioResult> {
  return fio([
    "--name=randwrite",
    `--filename=${file}`,
    `--size=${sizeMiB}m`,
    "--rw=randwrite",
    "--bsrange=4k-64k",
    "--time_based",
    `--runtime=${seconds}`,
    "--randrepeat=1",
    ...(rateMBps ? [`--rate=${rateMBps}m`] : []),
  ]);
}

/** Uncapped random 4 KiB writes for `seconds`, one at a time (psync): the IOPS and latency workload. */
export function fioRandom4k(file: string, sizeMiB: number, seconds: number): Promise<FioResult> {
  return fio([
    "--name=randwrite4k",
    `--filename=${file}`,
    `--size=${sizeMiB}m`,
    "--rw=randwrite",
    "--bs=4k",
    "--time_based",
    `--runtime=${seconds}`,
    "--randrepeat=0",
  ]);
}

export const FIO_4K_COMMAND =
  "fio --direct=1 --ioengine=psync --rw=randwrite --bs=4k --time_based --runtime=S --end_fsync=1 FILE";

/** The fio command line for the report. */
export function fioCommand(rateMBps?: number): string {
  return `fio --direct=1 --ioengine=psync --rw=randwrite --bsrange=4k-64k --time_based${rateMBps ? ` --rate=${rateMBps}m` : ""} FILE`;
}

async function fio(args: string[]): Promise<FioResult> {
  const child = spawn(
    "fio",
    ["--direct=1", "--ioengine=psync", "--output-format=json", "--end_fsync=1", ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  if (code !== 0) throw new Error(`fio ${args.join(" ")} failed (${code}): ${stderr.slice(-1000)}`);
  // fio may print warnings before its JSON.
  const json = JSON.parse(stdout.slice(stdout.indexOf("{"))) as {
    jobs: {
      elapsed: number;
      write: {
        bw_bytes: number;
        iops: number;
        clat_ns: { mean?: number; percentile?: Record<string, number> };
      };
    }[];
  };
  const job = json.jobs[0];
  if (!job) throw new Error("fio reported no job");
  const pct = job.write.clat_ns.percentile ?? {};
  return {
    mbPerSec: job.write.bw_bytes / 1e6,
    iops: job.write.iops,
    clatP50Us: (pct["50.000000"] ?? NaN) / 1000,
    clatP99Us: (pct["99.000000"] ?? NaN) / 1000,
    clatMeanUs: (job.write.clat_ns.mean ?? NaN) / 1000,
    seconds: job.elapsed,
  };
}
