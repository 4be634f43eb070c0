import { randomBytes, randomInt } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Command } from "commander";
import { type Clock, LifeboatError, type Logger } from "../base/index.js";
import { AgentService } from "../agent/service.js";
import { checkDisk, installAgent } from "../agent/install.js";
import { initServer } from "../control/init.js";
import { startServer } from "../control/start.js";
import { openRepository, verifyRepository } from "../store/index.js";
import { type ApiClient, withApi } from "./api-client.js";
import { type CliContext, parseIntOption } from "./context.js";
import { formatBytes } from "./output.js";
import { createOne } from "./pits.js";
import { action } from "./store.js";

/**
 * `lifeboat demo`: the main job end to end on the embedded defaults, in a
 * throw-away directory, as root or not, over loopback only. A server (control
 * plane and embedded replicator on one TLS port) is initialised and started in
 * this process; an agent is installed with an install token made through the
 * API and replicates a generated disk image (random, compressible and zero
 * regions) until it is CONTINUOUS; two PITs are taken the operator's way
 * (`pits create`), the second after ~2% of the image changed; a drill is
 * launched from that PIT (`POST /api/v1/launches`, image target), its disk
 * compared byte for byte with the image, the drill terminated, and the
 * repository verified with its data read. Any mismatch is DEMO_FAILED.
 */
export function demoCommand(): Command {
  return new Command("demo")
    .description(
      "replicate a generated disk image to a server in this process, take PITs and launch a drill from one, in a throw-away directory",
    )
    .option("--size-mib <n>", "size of the generated source disk image, in MiB", "256")
    .option("--keep", "keep the throw-away directory")
    .action(
      action<{ keep?: boolean; sizeMib: string }>(async (ctx, o) => {
        const sizeMiB = parseIntOption(o.sizeMib, "--size-mib");
        if (sizeMiB < 1) throw new LifeboatError("USAGE", "--size-mib wants at least 1", { exitCode: 2 });
        const dir = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-demo-"));
        try {
          say(`demo directory: ${dir}`);
          await runDemo(ctx, dir, sizeMiB * 1024 * 1024);
        } finally {
          if (o.keep) say(`kept ${dir}`);
          else await fs.rm(dir, { recursive: true, force: true });
        }
      }),
    );
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

async function runDemo(ctx: CliContext, dir: string, size: number): Promise<void> {
  const started = Date.now();
  const logger = ctx.logger;
  const dataDir = path.join(dir, "server");
  let t = Date.now();
  await initServer({ dataDir, hostnames: ["127.0.0.1"], logger });
  const server = await startServer(dataDir, { listen: "127.0.0.1:0", handleSignals: false, logger });
  let agent: AgentService | undefined;
  const summary: string[] = [];
  try {
    say(`1. server started in ${since(t)}: control plane and embedded replicator on ${server.url}`);
    const image = path.join(dir, "source-disk.img");
    t = Date.now();
    await writeDemoImage(image, size);
    say(`2. source disk image, ${formatBytes(size)} of random, text and zero stripes, in ${since(t)}`);
    const caFile = path.join(dataDir, "ca.pem");
    const apiOpts = { endpoint: server.url, caFile, apiKeyFile: path.join(dataDir, "admin-api.key") };
    await withApi(ctx, apiOpts, async (client) => {
      const configDir = path.join(dir, "agent");
      const caPem = await fs.readFile(caFile, "utf8");
      const serverName = await install(client, server.url, caPem, image, configDir, logger);
      agent = await AgentService.start({ configDir, logger, clock: agentClock });
      summary.push(`initial sync ${await untilContinuous(agent)}`);
      const first = await takePit(client, serverName);
      say(`5. PIT ${first.text}`);
      say(`6. changed ${await changeImage(image, size, 0.02)}`);
      const before = agent.replication.counters.bytesSent;
      const second = await takePit(client, serverName);
      const sent = agent.replication.counters.bytesSent - before;
      const share = `${((100 * sent) / size).toFixed(1)}%`;
      say(`   PIT ${second.text}`);
      say(`   sent ${formatBytes(sent)} for it: ${share} of the ${formatBytes(size)} image`);
      summary.push(`PITs ${first.secs} and ${second.secs} (${formatBytes(sent)} sent for the second)`);
      t = Date.now();
      const drill = await drillAndCheck(client, serverName, second.id, image);
      summary.push(`drill ${since(t)} (recovery time ${drill.toFixed(1)}s)`);
      t = Date.now();
      await verifyAll(dataDir, logger);
      summary.push(`verified ${since(t)}`);
    });
  } finally {
    try {
      await agent?.stop();
    } finally {
      await server.close();
    }
  }
  say(`8. stopped the agent and the server`);
  say(`OK: ${summary.join(", ")}; ${since(started)} in all`);
}

/** Makes a one-use install token through the API and installs an agent for the image; returns its server name. */
async function install(
  api: ApiClient,
  endpoint: string,
  caPem: string,
  image: string,
  configDir: string,
  logger: Logger,
): Promise<string> {
  const { token } = await api.call<{ token: string }>("/api/v1/tokens", {
    method: "POST",
    body: { role: "agent", uses: 1 },
  });
  const disk = await checkDisk(image, "image");
  const r = await installAgent({
    configDir,
    endpoint,
    token,
    caPem,
    hostname: "demo-source",
    blockSize: BLOCK_SIZE,
    disks: [disk],
    inventory: { disks: [{ index: 0, ...disk }] },
    logger,
  });
  say(`3. agent installed with a one-use install token: server ${r.serverName}, disk ${disk.path}`);
  return r.serverName;
}

/** Prints the agent's state about once a second until it is CONTINUOUS. */
async function untilContinuous(agent: AgentService): Promise<string> {
  const t = Date.now();
  let printed = t;
  for (;;) {
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
async function takePit(
  api: ApiClient,
  serverName: string,
): Promise<{ id: string; text: string; secs: string }> {
  const t = Date.now();
  const pit = await createOne(api, serverName, {}, true, PIT_TIMEOUT_MS);
  const id = String(pit.id);
  const takenAt = new Date(pit.takenAt as number | string).toISOString();
  const secs = since(t);
  return { id, secs, text: `${id}: ${String(pit.consistency)}-consistent, taken at ${takenAt}, in ${secs}` };
}

/** Exports the PIT's disk from the server's repository, compares it with the image, verifies the repository. */
/**
 * Launches a drill of `server` from PIT `pitId` through the API (the image
 * target: the disk written out of the repository, verified, inspected, with
 * a drill report), compares the drill's disk with the source image, and
 * removes the drill again with terminate. Returns the measured recovery time.
 */
async function drillAndCheck(api: ApiClient, server: string, pitId: string, image: string): Promise<number> {
  const t = Date.now();
  const { job } = await api.call<{ job: { id: string } }>("/api/v1/launches", {
    method: "POST",
    body: { servers: [server], pit: pitId, mode: "drill" },
  });
  let done: { state: string; result: DrillResult | null } | undefined;
  while (!done || !["succeeded", "failed", "terminated"].includes(done.state)) {
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
  const diff = await firstDifference(out.images[0]!, image);
  const report = JSON.parse(await fs.readFile(out.report, "utf8")) as {
    recoverySeconds: number;
    pit: { consistency: string };
  };
  say(
    `7. drill ${job.id} from PIT ${pitId} in ${since(t)}: disk ${diff === null ? "byte-identical to the source image" : `DIFFERENT from the source image (${diff})`}`,
  );
  say(
    `   recovery time ${report.recoverySeconds.toFixed(1)}s, consistency ${report.pit.consistency}; report ${out.reportHtml}`,
  );
  if (diff !== null)
    throw new LifeboatError("DEMO_FAILED", `the drill's disk differs from the source: ${diff}`);
  await api.call(`/api/v1/jobs/${job.id}/terminate`, { method: "POST", body: {} });
  for (let i = 0; i < 100; i++) {
    const j = (await api.call<{ job: { state: string } }>(`/api/v1/jobs/${job.id}`)).job;
    if (j.state === "terminated") break;
    await delay(200);
  }
  say(`   drill terminated: its directory ${path.dirname(out.report)} is removed`);
  return report.recoverySeconds;
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
    if (!report.ok) throw new LifeboatError("DEMO_FAILED", "verify --read-data found damage");
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

/** Overwrites about `fraction` of the image with random data, in 64 KiB writes at distinct scattered offsets. */
async function changeImage(file: string, size: number, fraction: number): Promise<string> {
  const blocks = Math.floor(size / BLOCK_SIZE);
  const count = Math.max(1, Math.round(blocks * fraction));
  const chosen = new Set<number>();
  while (chosen.size < Math.min(count, blocks)) chosen.add(randomInt(blocks));
  const fh = await fs.open(file, "r+");
  try {
    for (const b of chosen) await fh.write(randomBytes(BLOCK_SIZE), 0, BLOCK_SIZE, b * BLOCK_SIZE);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return `${((100 * chosen.size * BLOCK_SIZE) / size).toFixed(1)}% of the image (${chosen.size} scattered 64 KiB writes)`;
}

/** Random (incompressible), repetitive text (compressible) and zero regions, in 8 MiB stripes. */
async function writeDemoImage(file: string, size: number): Promise<void> {
  const fh = await fs.open(file, "w");
  try {
    const stripe = 8 << 20;
    const text = Buffer.from(
      "Lifeboat demo log line: replication ok, lag 2s, backlog 0 bytes\n"
        .repeat(stripe / 64)
        .slice(0, stripe),
    );
    for (let off = 0, i = 0; off < size; off += stripe, i++) {
      const len = Math.min(stripe, size - off);
      const kind = i % 3;
      if (kind === 0) await fh.write(randomBytes(len), 0, len, off);
      else if (kind === 1) await fh.write(text, 0, len, off);
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}
