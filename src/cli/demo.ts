import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Command } from "commander";
import { type Clock, LifeboatError, type Logger, writeFileAtomic } from "../base/index.js";
import { AgentService } from "../agent/service.js";
import { checkDisk, installAgent } from "../agent/install.js";
import { initServer } from "../control/init.js";
import { startServer } from "../control/start.js";
import type { DrillReport } from "../launch/index.js";
import { openRepository, verifyRepository } from "../store/index.js";
import { type ApiClient, withApi } from "./api-client.js";
import { type CliContext, parseIntOption } from "./context.js";
import { type DemoSource, checkDrillDisk, createDemoSource } from "./demo-source.js";
import { formatBytes } from "./output.js";
import { createOne } from "./pits.js";
import { action } from "./store.js";

/**
 * `lifeboat demo`: the main job end to end on the embedded defaults, in a
 * throw-away directory, over loopback only. A server (control plane and
 * embedded replicator on one TLS port) is initialised and started in this
 * process. The source disk is an ext4 filesystem with files and a small
 * database (demo-source.ts): as root, on a loop device written to while it
 * replicates; otherwise an image file in scan mode. An agent is installed
 * with an install token from a file and replicates until CONTINUOUS; two
 * PITs are taken the operator's way (`pits create`), the second after more
 * writes; a drill is launched from it (`POST /api/v1/launches`, image
 * target), its readiness shown, and its filesystem checked (e2fsck, every
 * file's SHA-256 and the database's rows against what the source held when
 * the PIT was asked for); the repository is verified with its data read.
 * Then it keeps running for the console until Ctrl-C, or stops with
 * `--exit`. Any mismatch is DEMO_FAILED; loop devices and mounts are
 * released on every way out.
 */
export function demoCommand(): Command {
  return new Command("demo")
    .description(
      "protect a generated ext4 disk with a server and an agent in this process, take PITs, launch a drill and check it, in a throw-away directory",
    )
    .option("--size-mib <n>", "size of the generated source disk, in MiB", "256")
    .option(
      "--source <kind>",
      "auto: a loop device when running as root, else an image file; image: always the file",
      "auto",
    )
    .option("--exit", "stop after the drill is checked (the default when standard input is not a terminal)")
    .option("--stay", "keep running until Ctrl-C after the drill, even when standard input is not a terminal")
    .option("--keep", "keep the throw-away directory")
    .action(
      action<{ keep?: boolean; exit?: boolean; stay?: boolean; sizeMib: string; source: string }>(
        async (ctx, o) => {
          const sizeMiB = parseIntOption(o.sizeMib, "--size-mib");
          if (sizeMiB < 32)
            throw new LifeboatError(
              "USAGE",
              "--size-mib wants at least 32 (an ext4 filesystem with the demo's files)",
              {
                exitCode: 2,
              },
            );
          if (o.source !== "auto" && o.source !== "image")
            throw new LifeboatError("USAGE", "--source is auto or image", { exitCode: 2 });
          const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-demo-"));
          const stop = interruption();
          try {
            say(`demo directory: ${dir}`);
            const stayUp = o.stay === true || (o.exit !== true && process.stdin.isTTY);
            await runDemo(ctx, dir, sizeMiB * 1024 * 1024, o.source, stayUp, stop);
          } finally {
            stop.dispose();
            if (o.keep) say(`kept ${dir}`);
            else await fs.rm(dir, { recursive: true, force: true });
          }
        },
      ),
    );
}

/** Ctrl-C (SIGINT) or SIGTERM: the demo checks it between steps and in its waits, then cleans up. */
interface Interruption {
  fired: boolean;
  /** Throws DEMO_INTERRUPTED once a signal came. */
  check(): void;
  /** Resolves at the first SIGINT or SIGTERM. */
  signalled: Promise<void>;
  dispose(): void;
}

function interruption(): Interruption {
  let fire: () => void = () => {};
  const signalled = new Promise<void>((resolve) => (fire = resolve));
  const self: Interruption = {
    fired: false,
    check: () => {
      if (self.fired)
        throw new LifeboatError("DEMO_INTERRUPTED", "interrupted: stopped and cleaned up", { exitCode: 130 });
    },
    signalled,
    dispose: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
  const onSignal = () => {
    self.fired = true;
    fire();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return self;
}

const BLOCK_SIZE = 64 * 1024;
const SYNC_TIMEOUT_MS = 30 * 60_000;
const PIT_TIMEOUT_MS = 10 * 60_000;

/**
 * The agent's engine races some waits against sleeps it never cancels (the
 * wait for a PIT's answer runs 10 s after every PIT), which would hold the
 * process open that long after the demo is done. Its sleeps here do not keep
 * the process alive; while the demo runs, the server's listener does.
 */
const agentClock: Clock = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref()),
};

const say = (s: string) => process.stdout.write(`${s}\n`);
const since = (t: number) => `${((Date.now() - t) / 1000).toFixed(1)}s`;

async function runDemo(
  ctx: CliContext,
  dir: string,
  size: number,
  prefer: "auto" | "image",
  stayUp: boolean,
  stop: Interruption,
): Promise<void> {
  const started = Date.now();
  const logger = ctx.logger;
  const dataDir = path.join(dir, "server");
  let t = Date.now();
  await initServer({ dataDir, hostnames: ["127.0.0.1"], logger });
  const server = await startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false, logger });
  let agent: AgentService | undefined;
  let source: DemoSource | undefined;
  const summary: string[] = [];
  try {
    say(`1. server started in ${since(t)}: control plane and embedded replicator on ${server.url}`);
    t = Date.now();
    source = await createDemoSource(dir, size, prefer);
    stop.check();
    const src = source;
    say(`2. source disk, ${formatBytes(size)} ext4 with files and a database, in ${since(t)}: ${src.why}`);
    const caFile = path.join(dataDir, "ca.pem");
    const apiKeyFile = path.join(dataDir, "admin-api.key");
    const apiOpts = { endpoint: server.url, caFile, apiKeyFile };
    await withApi(ctx, apiOpts, async (client) => {
      const flow = async () => {
        const configDir = path.join(dir, "agent");
        const caPem = await fs.readFile(caFile, "utf8");
        const serverName = await install(client, server.url, caPem, src, dir, configDir, logger);
        stop.check();
        agent = await AgentService.start({ configDir, logger, clock: agentClock });
        summary.push(
          `initial sync ${await untilContinuous(agent, stop)} (${agent.replication.tracker} mode)`,
        );
        stop.check();
        const first = await takePit(client, serverName);
        say(`5. PIT ${first.text}`);
        t = Date.now();
        say(`6. wrote ${await src.writeMore(8)} in ${since(t)}`);
        stop.check();
        const before = agent.replication.counters.bytesSent;
        const second = await takePit(client, serverName);
        const sent = agent.replication.counters.bytesSent - before;
        say(`   PIT ${second.text}`);
        say(
          `   sent ${formatBytes(sent)} for it: ${((100 * sent) / size).toFixed(1)}% of the ${formatBytes(size)} disk`,
        );
        summary.push(`PITs ${first.secs} and ${second.secs} (${formatBytes(sent)} sent for the second)`);
        stop.check();
        t = Date.now();
        const drill = await drillAndCheck(client, serverName, second, src, dir, stop);
        summary.push(`drill ${since(t)} (recovery time ${drill.recovery.toFixed(1)}s)`);
        stop.check();
        t = Date.now();
        await verifyAll(dataDir, logger);
        summary.push(`verified ${since(t)}`);
        return drill;
      };
      const drill = await flow();
      if (stayUp) {
        say(`OK: ${summary.join(", ")}; ${since(started)} in all`);
        say(`console:      ${server.url}/`);
        say(`API key file: ${apiKeyFile}`);
        say(`CA:           ${caFile}`);
        say(`drill report: ${drill.reportHtml}`);
        say(`still replicating; press Ctrl-C to stop and clean up`);
        await stop.signalled;
        say(`stopping`);
      } else {
        await terminateDrill(client, drill.jobId, drill.dir);
      }
    });
  } finally {
    try {
      await agent?.stop();
    } finally {
      try {
        await source?.close();
      } finally {
        await server.close();
      }
    }
  }
  say(
    `8. stopped the agent and the server${source?.kind === "loop" ? ", unmounted and detached the loop device" : ""}`,
  );
  if (!stayUp) say(`OK: ${summary.join(", ")}; ${since(started)} in all`);
}

/**
 * Makes a one-use install token through the API, writes it to a 0600 file
 * (as an operator hands it to a source server) and installs an agent for the
 * source disk from that file; returns the agent's server name.
 */
async function install(
  api: ApiClient,
  endpoint: string,
  caPem: string,
  source: DemoSource,
  dir: string,
  configDir: string,
  logger: Logger,
): Promise<string> {
  const { token } = await api.call<{ token: string }>("/api/v1/tokens", {
    method: "POST",
    body: { role: "agent", uses: 1 },
  });
  const tokenFile = path.join(dir, "agent.token");
  await writeFileAtomic(tokenFile, `${token}\n`, { mode: 0o600 });
  const disk = await checkDisk(source.disk.path, source.disk.kind);
  const r = await installAgent({
    configDir,
    endpoint,
    token: (await fs.readFile(tokenFile, "utf8")).trim(),
    caPem,
    hostname: "demo-source",
    blockSize: BLOCK_SIZE,
    disks: [disk],
    inventory: { disks: [{ index: 0, ...disk }] },
    logger,
  });
  say(
    `3. agent installed with the one-use install token in ${tokenFile}: server ${r.serverName}, disk ${disk.path}`,
  );
  return r.serverName;
}

/** Prints the agent's state about once a second until it is CONTINUOUS. */
async function untilContinuous(agent: AgentService, stop: Interruption): Promise<string> {
  const t = Date.now();
  let printed = t;
  for (;;) {
    stop.check();
    const s = agent.replication.status();
    if (s?.state === "CONTINUOUS") break;
    if (Date.now() - t > SYNC_TIMEOUT_MS)
      throw new LifeboatError(
        "DEMO_FAILED",
        `the agent did not reach CONTINUOUS (it is ${s?.state ?? "?"})`,
        {
          hint: s?.lastError
            ? `the agent's last error: [${s.lastError.code}] ${s.lastError.message}`
            : "run `lifeboat demo --keep --debug` and read the agent's log",
        },
      );
    if (s && Date.now() - printed >= 1000) {
      printed = Date.now();
      const p = s.disks[0]?.progress;
      const pct = p ? `${Math.floor((100 * p.doneBytes) / p.totalBytes)}%` : "";
      const rate = p ? `${(p.bytesPerSecond / 1e6).toFixed(0)} MB/s` : "";
      say(`   ${s.state.padEnd(12)} ${pct.padStart(4)}  ${rate}`.trimEnd());
    }
    await delay(100);
  }
  const c = agent.replication.counters;
  say(
    `4. initial sync done in ${since(t)}: CONTINUOUS, read ${formatBytes(c.bytesRead)}, sent ${formatBytes(c.bytesSent)} (compressed, zeros not sent)`,
  );
  return since(t);
}

/** `lifeboat pits create SERVER`'s code path: a request over the API, then its command polled until done. */
async function takePit(api: ApiClient, serverName: string): Promise<Pit> {
  const t = Date.now();
  const pit = await createOne(api, serverName, {}, true, PIT_TIMEOUT_MS);
  const id = String(pit.id);
  const takenAt = new Date(pit.takenAt as number | string).toISOString();
  const secs = since(t);
  return {
    id,
    askedAt: t,
    secs,
    text: `${id}: ${String(pit.consistency)}-consistent, taken at ${takenAt}, in ${secs}`,
  };
}

interface Pit {
  id: string;
  /** When it was asked for: everything durable before is in it. */
  askedAt: number;
  text: string;
  secs: string;
}

/**
 * Launches a drill of `server` from `pit` through the API (the image target:
 * the disk written out of the repository, verified, inspected, with a drill
 * report), shows its readiness and checks its filesystem against what the
 * source held when the PIT was asked for.
 */
async function drillAndCheck(
  api: ApiClient,
  server: string,
  pit: Pit,
  source: DemoSource,
  dir: string,
  stop: Interruption,
): Promise<{ jobId: string; recovery: number; reportHtml: string; dir: string }> {
  const t = Date.now();
  const { job } = await api.call<{ job: { id: string } }>("/api/v1/launches", {
    method: "POST",
    body: { servers: [server], pit: pit.id, mode: "drill" },
  });
  let done: { state: string; result: DrillResult | null } | undefined;
  while (!done || !["succeeded", "failed", "terminated"].includes(done.state)) {
    stop.check();
    await delay(200);
    done = (await api.call<{ job: { state: string; result: DrillResult | null } }>(`/api/v1/jobs/${job.id}`))
      .job;
  }
  const out = done.result?.outputs?.servers?.[0];
  if (done.state !== "succeeded" || !out)
    throw new LifeboatError(
      "DEMO_FAILED",
      `the drill ${job.id} ${done.state}: ${done.result?.error?.message ?? ""}`,
      {
        hint: `lifeboat jobs logs ${job.id}`,
      },
    );
  const report = JSON.parse(await fs.readFile(out.report, "utf8")) as DrillReport;
  say(
    `7. drill ${job.id} from PIT ${pit.id} in ${since(t)}: recovery time ${(report.recoverySeconds ?? 0).toFixed(1)}s, consistency ${report.pit.consistency}`,
  );
  const r = report.readiness;
  say(
    `   readiness (${report.profile} profile): ${r ? `${r.verdict}${r.ready ? "" : " (not bootable as is)"}` : "not inspected"}`,
  );
  for (const p of r?.problems.filter((p) => !p.message.startsWith(r.verdict)).slice(0, 3) ?? [])
    say(`     ${p.severity} ${p.code}: ${p.message}`);
  const image = out.images[0]!;
  const check = await checkDrillDisk(source, image, pit.askedAt, dir);
  say(
    `   e2fsck clean; ${check.filesChecked} files match their SHA-256 at PIT time; database integrity ok with ${check.rows} rows (${check.rowsExpected} committed before the PIT)`,
  );
  if (source.kind === "image") {
    const diff = await firstDifference(image, source.disk.path);
    if (diff !== null)
      throw new LifeboatError("DEMO_FAILED", `the drill's disk differs from the source: ${diff}`);
    say(`   disk byte-identical to the source image`);
  }
  say(`   report ${out.reportHtml}`);
  return {
    jobId: job.id,
    recovery: report.recoverySeconds ?? 0,
    reportHtml: out.reportHtml,
    dir: path.dirname(out.report),
  };
}

/** Ends a drill with terminate, which removes what it made. */
async function terminateDrill(api: ApiClient, jobId: string, dir: string): Promise<void> {
  await api.call(`/api/v1/jobs/${jobId}/terminate`, { method: "POST", body: {} });
  for (let i = 0; i < 100; i++) {
    const j = (await api.call<{ job: { state: string } }>(`/api/v1/jobs/${jobId}`)).job;
    if (j.state === "terminated") break;
    await delay(200);
  }
  say(`   drill terminated: its directory ${dir} is removed`);
}

interface DrillResult {
  outputs?: { servers?: { images: string[]; report: string; reportHtml: string }[] };
  error?: { message: string };
}

/** store verify --read-data on the server's repository; DEMO_FAILED on any damage. */
async function verifyAll(dataDir: string, logger: Logger): Promise<void> {
  const repo = await openRepository(path.join(dataDir, "repo"), {
    keyFile: path.join(dataDir, "keys", "repo.key"),
    logger,
  });
  try {
    const t = Date.now();
    const report = await verifyRepository(repo, { readData: true });
    say(
      `   verify --read-data in ${since(t)}: ${report.ok ? "no damage" : "DAMAGE FOUND"} in ${report.pits} PITs, ${report.referencedChunks} chunks`,
    );
    if (!report.ok) {
      for (const d of report.damage.slice(0, 10)) say(`     ${d.code} (${d.kind} ${d.object}): ${d.message}`);
      if (report.damage.length > 10) say(`     ... and ${report.damage.length - 10} more`);
      throw new LifeboatError("DEMO_FAILED", "verify --read-data found damage");
    }
  } finally {
    await repo.close();
  }
}

/** null when the files hold the same bytes, else where they first differ. */
async function firstDifference(a: string, b: string): Promise<string | null> {
  const [fa, fb] = await Promise.all([fs.open(a, "r"), fs.open(b, "r")]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return `sizes ${sa.size} and ${sb.size}`;
    const step = 4 << 20;
    const [ba, bb] = [Buffer.alloc(step), Buffer.alloc(step)];
    for (let off = 0; off < sa.size; off += step) {
      const len = Math.min(step, sa.size - off);
      await Promise.all([fa.read(ba, 0, len, off), fb.read(bb, 0, len, off)]);
      if (!ba.subarray(0, len).equals(bb.subarray(0, len))) return `in the 4 MiB at offset ${off}`;
    }
    return null;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
