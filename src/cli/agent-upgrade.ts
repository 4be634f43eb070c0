import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { openSync } from "node:fs";
import { chmod, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { request } from "undici";
import { LifeboatError } from "../base/index.js";
import { agentPaths, loadAgentConfig } from "../agent/index.js";
import { stopAgent } from "../agent/install.js";
// Only the manifest's format: the agent bundle must not reach esbuild through bundle/index.ts.
import { type Manifest, hashFile, parseManifest } from "../bundle/manifest.js";
import { createApiDispatcher, verifyDetached } from "../net/index.js";
import { action } from "./action.js";
import { printJson, printLines } from "./output.js";

export interface UpgradeOptions {
  configDir: string;
  /** The installed bundle (default: the directory this agent runs from). */
  installDir?: string;
  /** Where the bundle is (default ENDPOINT/downloads/agent/). */
  from?: string;
  dryRun?: boolean;
}

export interface UpgradeResult {
  dir: string;
  from: string | null;
  to: string;
  replaced: string[];
  removed: string[];
}

const EXECUTABLE = new Set(["lifeboat-agent", "install.sh"]);

/**
 * Updates an agent installed from a bundle, checked as install.sh checks it:
 * the manifest's signature must verify with a release certificate issued by
 * the CA this agent already trusts (its D/ca.pem), and every new file must
 * match the manifest before anything is replaced. Files are replaced by
 * rename, the manifest last; the agent's configuration and replication state
 * (its D) are not touched, so the restarted agent resumes without a resync.
 */
export async function upgradeAgent(o: UpgradeOptions): Promise<UpgradeResult> {
  const dir = o.installDir ?? path.dirname(fileURLToPath(import.meta.url));
  const current = await readFile(path.join(dir, "manifest"), "utf8").then(parseManifest, () => undefined);
  if (current === undefined)
    throw new LifeboatError("AGENT_UPGRADE_NOT_BUNDLE", `${dir} is not an agent installed from a bundle`, {
      hint: "run the agent installed by install.sh (PREFIX/bin/lifeboat-agent), or give --install-dir",
      exitCode: 2,
    });
  const config = await loadAgentConfig(o.configDir);
  const caPem = await readFile(agentPaths(o.configDir).ca, "utf8");
  const base = (o.from ?? `${config.endpoint.replace(/\/+$/, "")}/downloads/agent`).replace(/\/+$/, "") + "/";
  const dispatcher = createApiDispatcher({ caPem });
  try {
    const get = async (name: string): Promise<Buffer> => {
      const r = await request(base + name, { dispatcher }).catch((err: unknown) => {
        throw new LifeboatError(
          "AGENT_UPGRADE_FETCH_FAILED",
          `cannot fetch ${base}${name}: ${(err as Error).message}`,
          {
            hint: "check that the server is reachable and has a bundle (`lifeboat bundle build` there)",
            cause: err,
            retryable: true,
          },
        );
      });
      const body = Buffer.from(await r.body.arrayBuffer());
      if (r.statusCode !== 200)
        throw new LifeboatError(
          "AGENT_UPGRADE_FETCH_FAILED",
          `${base}${name} answered HTTP ${r.statusCode}`,
          {
            hint: "build the bundle on the server with `lifeboat bundle build`",
          },
        );
      return body;
    };
    const text = await get("manifest");
    const sig = await get("manifest.sig");
    const release = (await get("release.pem")).toString("utf8");
    if (!verifyDetached(release, caPem, text, sig.toString("base64")))
      throw new LifeboatError(
        "AGENT_UPGRADE_UNVERIFIED",
        `the bundle at ${base} is not signed by a release key of this agent's CA: nothing was changed`,
        { hint: "rebuild the bundle on the server (`lifeboat bundle build`); a changed bundle is refused" },
      );
    const next: Manifest = parseManifest(text.toString("utf8"));
    const replaced: string[] = [];
    const staged: string[] = [];
    try {
      for (const f of next.files) {
        const have = await hashFile(path.join(dir, f.name)).catch(() => undefined);
        if (have?.sha256 === f.sha256 && have.size === f.size) continue;
        const data = await get(f.name);
        const sha = createHash("sha256").update(data).digest("hex");
        if (data.length !== f.size || sha !== f.sha256)
          throw new LifeboatError(
            "AGENT_UPGRADE_UNVERIFIED",
            `the bundle's file ${f.name} does not match its signed manifest: nothing was changed`,
            { hint: "fetch again; if it persists, the copy on the way was changed" },
          );
        replaced.push(f.name);
        if (o.dryRun) continue;
        const tmp = path.join(dir, `.${f.name}.upgrade`);
        await writeFile(tmp, data, { mode: EXECUTABLE.has(f.name) ? 0o755 : 0o644 });
        await chmod(tmp, EXECUTABLE.has(f.name) ? 0o755 : 0o644);
        staged.push(f.name);
      }
      const keep = new Set(next.files.map((f) => f.name));
      const removed = current.files.map((f) => f.name).filter((n) => !keep.has(n));
      if (!o.dryRun) {
        for (const n of staged) await rename(path.join(dir, `.${n}.upgrade`), path.join(dir, n));
        staged.length = 0;
        for (const n of removed) await rm(path.join(dir, n), { force: true });
        await writeFile(path.join(dir, ".manifest.sig.upgrade"), sig);
        await rename(path.join(dir, ".manifest.sig.upgrade"), path.join(dir, "manifest.sig"));
        await writeFile(path.join(dir, ".manifest.upgrade"), text);
        await rename(path.join(dir, ".manifest.upgrade"), path.join(dir, "manifest"));
      }
      return { dir, from: current.version, to: next.version, replaced, removed };
    } finally {
      for (const n of staged) await rm(path.join(dir, `.${n}.upgrade`), { force: true });
    }
  } finally {
    await dispatcher.close();
  }
}

/**
 * Restarts the agent after an upgrade: through systemd when its unit is
 * there and active, else (an agent started by install.sh --no-systemd) stops
 * it and starts the installed agent again in the background, as install.sh
 * does (pid file and log in the installation directory).
 */
export async function restartAgent(configDir: string, dir: string): Promise<string> {
  const systemd = await stat("/run/systemd/system").then(
    () => true,
    () => false,
  );
  if (systemd && (await run("systemctl", ["is-active", "--quiet", "lifeboat-agent.service"])) === 0) {
    if ((await run("systemctl", ["restart", "lifeboat-agent.service"])) !== 0)
      throw new LifeboatError(
        "AGENT_UPGRADE_RESTART_FAILED",
        "systemctl restart lifeboat-agent.service failed",
        {
          hint: "see `systemctl status lifeboat-agent` and `journalctl -u lifeboat-agent`",
        },
      );
    return "restarted lifeboat-agent.service";
  }
  const stopped = await stopAgent(configDir);
  const bin = path.join(dir, "bin", "lifeboat-agent");
  const log = openSync(path.join(dir, "agent.log"), "a");
  const child = spawn(bin, ["agent", "run", "--config-dir", configDir], {
    detached: true,
    stdio: ["ignore", log, log],
  });
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", (err) =>
      reject(
        new LifeboatError("AGENT_UPGRADE_RESTART_FAILED", `cannot start ${bin}: ${err.message}`, {
          hint: "start the agent by hand: PREFIX/bin/lifeboat-agent agent run",
          cause: err,
        }),
      ),
    );
  });
  child.unref();
  await writeFile(path.join(dir, "agent.pid"), `${child.pid}\n`);
  return `${stopped !== undefined ? `stopped pid ${stopped}, ` : ""}started the agent (pid ${child.pid})`;
}

function run(cmd: string, args: string[]): Promise<number | null> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: "ignore" });
    c.once("error", () => resolve(null));
    c.once("close", (code) => resolve(code));
  });
}

/** `lifeboat agent upgrade`: the installed agent updates itself from the control plane's bundle. */
export function agentUpgradeCommand(defaultConfigDir: string): Command {
  return new Command("upgrade")
    .description("update this agent from the control plane's signed bundle (checked like install.sh)")
    .option("--config-dir <dir>", "the agent's configuration directory", defaultConfigDir)
    .option("--install-dir <dir>", "the installed bundle (default: where this agent runs from)")
    .option("--from <url>", "the bundle's URL (default ENDPOINT/downloads/agent/)")
    .option("--dry-run", "verify and say what would change; change nothing")
    .option("--no-restart", "do not restart the agent afterwards")
    .action(
      action<{ configDir: string; installDir?: string; from?: string; dryRun?: boolean; restart: boolean }>(
        async (ctx, o) => {
          const r = await upgradeAgent({
            configDir: o.configDir,
            ...(o.installDir !== undefined ? { installDir: path.resolve(o.installDir) } : {}),
            ...(o.from !== undefined ? { from: o.from } : {}),
            dryRun: Boolean(o.dryRun),
          });
          const changed = r.replaced.length + r.removed.length > 0;
          const restarted = changed && !o.dryRun && o.restart ? await restartAgent(o.configDir, r.dir) : null;
          if (ctx.json) printJson({ ...r, dryRun: Boolean(o.dryRun), restarted });
          else
            printLines([
              ...r.replaced.map((n) => `${o.dryRun ? "would replace" : "replaced"} ${n}`),
              ...r.removed.map((n) => `${o.dryRun ? "would remove" : "removed"} ${n}`),
              changed
                ? `agent ${r.from ?? "?"} -> ${r.to} in ${r.dir}`
                : `agent ${r.to} in ${r.dir} is up to date`,
              ...(restarted ? [restarted] : []),
            ]);
        },
      ),
    );
}
