import { readFile } from "node:fs/promises";
import path from "node:path";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import {
  DEFAULT_THROUGHPUT_BYTES,
  DEFAULT_TIMEOUT_MS,
  type DoctorIdentity,
  type DoctorReport,
  parseFingerprint,
  runDoctor,
} from "../net/index.js";
import { type CliContext, parseDuration, parseSize } from "./context.js";
import { printJson, printLines } from "./output.js";
import { action } from "./action.js";
import { readCaFile, readTokenInput, stdinIsPipeOrFile } from "./token-input.js";

export interface DoctorOpts {
  endpoint?: string;
  caFile?: string;
  caFingerprint?: string;
  tokenFile?: string;
  proxy?: string;
  timeout: string;
  throughput: string;
  configDir: string;
  server?: boolean;
  dataDir?: string;
  config?: string;
}

const DEFAULT_AGENT_CONFIG_DIR = "/etc/lifeboat/agent";

/** The server's own side of `doctor --server`, given by the full CLI only (the agent bundle has none). */
export type ServerDoctor = (o: DoctorOpts) => Promise<DoctorReport>;

/**
 * `lifeboat doctor`: the connectivity doctor on a source server (every step
 * from name resolution to the data path, docs/doctor.md) and, when `server`
 * is given, `--server` for the recovery site's own side. Exit 0 only when no
 * step failed. Nothing here reaches the control plane's code: the agent
 * bundle (src/cli/agent-main.ts) carries this command without `server`.
 */
export function buildDoctorCommand(server?: ServerDoctor): Command {
  const c = new Command("doctor")
    .description(
      server
        ? "check this host's way to the recovery site step by step (or, with --server, the server's own side)"
        : "check this host's way to the recovery site step by step",
    )
    .option("--endpoint <url>", "the control plane, https://host:port (default: the installed agent's)")
    .option("--ca-file <file>", "the Lifeboat CA certificate (the server's D/ca.pem)")
    .option("--ca-fingerprint <sha256>", "SHA-256 fingerprint of the CA certificate")
    .option(
      "--token-file <file>",
      "file holding the install token to check (else LIFEBOAT_TOKEN, else piped standard input)",
    )
    .option("--proxy <url>", "go through this HTTP proxy (CONNECT), whatever the environment says")
    .option("--timeout <duration>", "longest wait for each connection or answer", "5s")
    .option("--throughput <size>", "bytes sent by the throughput test (at most 8MiB)", "4MiB")
    .option("--config-dir <dir>", "an installed agent's configuration directory", DEFAULT_AGENT_CONFIG_DIR);
  if (server)
    c.option("--server", "check the recovery site's server instead (run it there)")
      .option("--data-dir <dir>", "with --server: the server's data directory (default /var/lib/lifeboat)")
      .option("--config <file>", "with --server: the server's config.json");
  return c.action(
    action<DoctorOpts>(async (ctx, o) => {
      const r = o.server && server ? await server(o) : await clientSide(ctx, o);
      if (ctx.json) printJson(r);
      else printLines(reportLines(r));
      return r.ok ? 0 : 1;
    }),
  );
}

async function clientSide(ctx: CliContext, o: DoctorOpts): Promise<DoctorReport> {
  const timeoutMs = parseDuration(o.timeout, "--timeout");
  if (timeoutMs < 100 || timeoutMs > 600_000)
    throw new LifeboatError("USAGE", `--timeout ${o.timeout}: give 100ms to 10m`, { exitCode: 2 });
  const throughputBytes = parseSize(o.throughput, "--throughput");
  if (throughputBytes < 1 || throughputBytes > 8 * 1024 * 1024)
    throw new LifeboatError("USAGE", `--throughput ${o.throughput}: give 1 byte to 8MiB`, { exitCode: 2 });
  if (o.caFingerprint !== undefined) parseFingerprint(o.caFingerprint);
  const installed = await installedAgent(ctx, o.configDir);
  const endpoint = o.endpoint ?? installed?.endpoint;
  if (endpoint === undefined)
    throw new LifeboatError("USAGE", "missing --endpoint", {
      hint: "give --endpoint https://HOST:PORT (the control plane), with --ca-file or --ca-fingerprint",
      exitCode: 2,
    });
  // An installed identity counts only for the endpoint it was made for.
  const identity = installed && sameEndpoint(installed.endpoint, endpoint) ? installed : undefined;
  const caPem =
    o.caFile !== undefined
      ? await readCaFile(o.caFile)
      : o.caFingerprint === undefined
        ? identity?.caPem
        : undefined;
  const token = await readOptionalToken(o.tokenFile);
  return runDoctor({
    endpoint,
    ...(caPem !== undefined ? { caPem } : {}),
    ...(o.caFingerprint !== undefined ? { caFingerprint: o.caFingerprint } : {}),
    ...(token !== undefined ? { token } : {}),
    ...(identity ? { identity: identity.identity } : {}),
    ...(o.proxy !== undefined ? { proxy: o.proxy } : {}),
    proxyEnv: ctx.env.proxy,
    timeoutMs: timeoutMs || DEFAULT_TIMEOUT_MS,
    throughputBytes: throughputBytes || DEFAULT_THROUGHPUT_BYTES,
  });
}

/** One line per step: name, status, time, then what was measured and, for a problem, what to do. */
export function reportLines(r: DoctorReport): string[] {
  const lines = r.steps.map((s) => {
    const extra = s.status === "ok" ? "" : s.hint ? `  → ${s.hint}` : "";
    const code = s.code && s.status !== "ok" ? ` [${s.code}]` : "";
    return `${s.name.padEnd(12)} ${s.status.padEnd(7)} ${`${s.ms} ms`.padStart(8)}  ${s.value || "-"}${code}${extra}`;
  });
  const failed = r.steps.filter((s) => s.status === "fail").map((s) => s.name);
  lines.push(r.ok ? "ok: nothing failed" : `FAILED: ${failed.join(", ")}`);
  return lines;
}

interface Installed {
  endpoint: string;
  caPem: string;
  identity: DoctorIdentity;
}

/** The agent identity in configDir, when there is one this user may read; undefined otherwise. */
async function installedAgent(ctx: CliContext, configDir: string): Promise<Installed | undefined> {
  const { agentPaths, loadAgentConfig } = await import("../agent/index.js");
  const p = agentPaths(configDir);
  try {
    const config = await loadAgentConfig(configDir);
    const [certPem, keyPem, caPem] = await Promise.all([p.cert, p.key, p.ca].map((f) => readFile(f, "utf8")));
    return {
      endpoint: config.endpoint,
      caPem: caPem!,
      identity: {
        certPem: certPem!,
        keyPem: keyPem!,
        ...(config.dataAddress !== undefined ? { dataAddress: config.dataAddress } : {}),
      },
    };
  } catch (err) {
    if ((err as { code?: string }).code !== "AGENT_NOT_INSTALLED")
      ctx.logger.debug({ err }, `no usable agent identity in ${path.resolve(configDir)}`);
    return undefined;
  }
}

function sameEndpoint(a: string, b: string): boolean {
  try {
    return new URL(a).host === new URL(b).host;
  } catch {
    return false;
  }
}

/** The install token, if one is given; standard input only when it is a pipe or a file. */
function readOptionalToken(tokenFile: string | undefined): Promise<string | undefined> {
  return readTokenInput(tokenFile, stdinIsPipeOrFile);
}
