/**
 * The peers of the replication benchmark, on the agent's own disk image:
 * restic, borg and rsync back up the image file right after lifeboat's step,
 * so every tool sees the same data. The commands and settings are those of
 * peers.ts; only the timing is asynchronous here, since the agent keeps
 * running (and tracing) in this process meanwhile.
 */
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import path from "node:path";
import {
  RESTIC_BACKUP,
  RESTIC_BACKUP_CMD,
  borgCreate,
  borgCreateCmd,
  borgInit,
  resticInit,
  step,
  type Measurement,
  type PeerRepo,
  type Phase,
  type Secrets,
  type StepResult,
} from "./peers.js";
import { Interrupted } from "./sys.js";

/** Runs a command to its end without blocking the event loop; throws on failure. */
export async function spawnAsync(
  cmd: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; stdinFd?: number } = {},
): Promise<{ stdout: string; stderr: string }> {
  const child = spawn(cmd, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd ?? process.cwd(),
    stdio: [opts.stdinFd ?? "ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once("exit", (c, s) => resolve([c, s])),
  );
  if (signal === "SIGINT" || signal === "SIGTERM" || code === 130 || code === 143)
    throw new Interrupted(`${cmd} ${args.slice(0, 3).join(" ")}`, signal ?? "SIGINT");
  if (code !== 0)
    throw new Error(`${cmd} ${args.join(" ")} failed (${code ?? signal}): ${stderr.trim().slice(-1500)}`);
  return { stdout, stderr };
}

/** sync, then drop the page cache: every timed step reads from the disk. */
export async function dropCachesAsync(): Promise<void> {
  await spawnAsync("sync", []);
  writeFileSync("/proc/sys/vm/drop_caches", "3\n");
}

/** peers.ts `timed`, asynchronous: cold cache, GNU time for peak RSS, a final sync inside the timing. */
async function timedAsync(
  cmd: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string },
): Promise<Measurement> {
  const report = path.join(opts.cwd ?? process.cwd(), `.time-${process.pid}.txt`);
  await dropCachesAsync();
  const fd = opts.input ? openSync(opts.input, "r") : undefined;
  const load1 = loadavg()[0] ?? 0;
  const start = performance.now();
  try {
    const r = await spawnAsync("/usr/bin/time", ["-f", "%e %M", "-o", report, cmd, ...args], {
      ...opts,
      ...(fd !== undefined ? { stdinFd: fd } : {}),
    });
    const syncStart = performance.now();
    await spawnAsync("sync", []);
    const end = performance.now();
    const lastLine = readFileSync(report, "utf8").trim().split("\n").pop() ?? "";
    return {
      status: 0,
      ...r,
      seconds: (end - start) / 1000,
      syncSeconds: (end - syncStart) / 1000,
      peakRssKiB: Number(lastLine.split(" ")[1] ?? NaN),
      load1,
    };
  } finally {
    if (fd !== undefined) closeSync(fd);
    rmSync(report, { force: true });
  }
}

export interface ReplicationPeers {
  /** Backs up (copies) `image` with every peer; `initial` first, then `changed`. */
  backup(phase: Phase, image: string): Promise<StepResult[]>;
}

/** restic, borg (default chunker) and an rsync copy, their repositories under `repos`. */
export function replicationPeers(repos: string, secrets: Secrets, imageBytes: number): ReplicationPeers {
  mkdirSync(repos, { recursive: true });
  const restic: PeerRepo = resticInit(repos, secrets);
  const borg: PeerRepo = borgInit(repos, secrets, "borg");
  const rsyncDir = path.join(repos, "rsync");
  mkdirSync(rsyncDir, { recursive: true });
  const copy = path.join(rsyncDir, "disk0.img");
  return {
    async backup(phase, image) {
      const steps: StepResult[] = [];
      const r = await timedAsync("restic", RESTIC_BACKUP, { ...restic.opts, input: image });
      steps.push(step("restic", phase, RESTIC_BACKUP_CMD, r, imageBytes, restic.repo));
      const b = await timedAsync("borg", borgCreate(borg.repo, phase), { ...borg.opts, input: image });
      steps.push(step("borg", phase, borgCreateCmd(), b, imageBytes, borg.repo));
      const delta = phase === "initial" ? [] : ["--no-whole-file"];
      const s = await timedAsync("rsync", ["--inplace", ...delta, image, copy], { cwd: repos });
      steps.push(
        step("rsync", phase, `rsync --inplace ${delta.join(" ")} IMG COPY`, s, imageBytes, rsyncDir),
      );
      return steps;
    },
  };
}
