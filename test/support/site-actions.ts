/**
 * What end-to-end tests do on a site again and again: wait for a job, take
 * a PIT through the API, install an agent on a device with a fresh token.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { checkDisk, installAgent } from "../../src/agent/install.js";
import { loadAgentConfig, saveAgentConfig } from "../../src/agent/config.js";
import type { Site } from "./lifeboat-site.js";
import { until } from "./pit-check.js";

export interface JobView {
  id: string;
  state: string;
  result: Record<string, unknown> | null;
}

/** Polls the job until it finished (succeeded, failed, terminated). */
export async function waitForJob(site: Site, id: string, ms = 120_000): Promise<JobView> {
  let job: JobView | undefined;
  await until(
    `job ${id}`,
    async () => {
      job = (await site.api<{ job: JobView }>(`/api/v1/jobs/${id}`)).job;
      return ["succeeded", "failed", "terminated"].includes(job.state);
    },
    ms,
    () => job,
  );
  return job!;
}

/** Asks the server's agent for a PIT and waits for it; fails with the command's error. Returns the PIT id. */
export async function takePit(
  site: Site,
  server: string,
  consistency = "filesystem",
  ms?: number,
): Promise<string> {
  const r = await site.api<{ jobId: string; commandId: string }>(`/api/v1/servers/${server}/pits`, {
    method: "POST",
    body: { consistency },
  });
  const job = await waitForJob(site, r.jobId, ms);
  const command = await site.api<{ result: { pitId: string }; error: unknown }>(
    `/api/v1/commands/${r.commandId}`,
  );
  assert.equal(job.state, "succeeded", JSON.stringify(command.error));
  return command.result.pitId;
}

/**
 * Installs an agent for `device` in DIR/agent-NAME with a one-use token (for
 * a recovery job's recovered instance with `recoveryOf`): 64 KiB blocks, no
 * scheduled PITs, a freeze cap with room for a busy machine.
 */
export async function installTestAgent(
  site: Site,
  opts: { dir: string; name: string; device: string; endpoint?: string; recoveryOf?: string },
): Promise<{ configDir: string; serverId: string; serverName: string }> {
  const token = await site.api<{ token: string }>("/api/v1/tokens", {
    method: "POST",
    body: { role: "agent", uses: 1, ...(opts.recoveryOf ? { recoveryOf: opts.recoveryOf } : {}) },
  });
  const configDir = path.join(opts.dir, `agent-${opts.name}`);
  const installed = await installAgent({
    configDir,
    endpoint: opts.endpoint ?? site.url,
    token: token.token,
    caPem: site.caPem,
    hostname: opts.name,
    blockSize: 64 * 1024,
    disks: [await checkDisk(opts.device, "device")],
    inventory: {},
  });
  const config = await loadAgentConfig(configDir);
  await saveAgentConfig(configDir, {
    ...config,
    settings: { ...config.settings, freezeCapMs: 15_000, pitIntervalSeconds: 0 },
  });
  return { configDir, serverId: installed.serverId, serverName: installed.serverName };
}
