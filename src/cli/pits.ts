import { Command } from "commander";
import { setTimeout as delay } from "node:timers/promises";
import { LifeboatError } from "../base/index.js";
import { type DamagedPit, listPits } from "../store/index.js";
import { type ApiClient, type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { parseDuration, withRepo } from "./context.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./store.js";

export function pitsCommand(): Command {
  const pits = new Command("pits").description("point-in-time snapshots");
  pits
    .command("list")
    .description("list PITs, oldest first")
    .option("--repo <location>", "repository: a directory or s3://bucket/prefix?endpoint=...")
    .option("--key-file <file>", "repository key")
    .option("--server <name>", "only this server's PITs")
    .action(
      action<{ repo?: string; keyFile?: string; server?: string }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const damaged: DamagedPit[] = [];
          const list = await listPits(repo, { ...(o.server ? { server: o.server } : {}), damaged });
          for (const d of damaged)
            process.stderr.write(`warning: PIT ${d.id} cannot be read [${d.code}]: ${d.message}\n`);
          if (ctx.json) printJson({ pits: list, damaged });
          else
            printLines(
              list.map(
                (p) =>
                  `${p.id}  ${p.server.padEnd(16)} #${String(p.seq).padEnd(4)} ${p.time}  ${p.consistency.padEnd(11)} ${p.disks.length} disk(s), ${formatBytes(p.disks.reduce((n, d) => n + d.sizeBytes, 0))}`,
              ),
            );
        }),
      ),
    );
  pitsCreateCommand(pits);
  return pits;
}

interface CreateOpts extends ApiOpts {
  group?: string;
  consistency?: string;
  wait: boolean;
  timeout: string;
}
interface CommandState {
  state: string;
  result: Record<string, unknown> | null;
  error: { code: string; message: string } | null;
  jobId: string | null;
}
interface GroupPitState {
  state: string;
  takenAt: string | null;
  members: {
    serverId: string;
    state: string;
    result: Record<string, unknown> | null;
    error: CommandState["error"];
  }[];
}

const POLL_MS = 500;
const LEVELS = ["application", "filesystem", "crash", "none"];

/**
 * `lifeboat pits create SERVER | --group G`: asks the agent (or every agent
 * of a consistency group) for a PIT now, over the API, and waits for it.
 */
function pitsCreateCommand(pits: Command): void {
  apiOptions(
    pits
      .command("create")
      .description("make a PIT now: of one server, or of a consistency group at one point (operator)")
      .argument("[server]", "id or name")
      .option("--group <group>", "every server of this consistency group, at one consistency point")
      .option("--consistency <level>", "the least consistency wanted: application, filesystem, crash or none")
      .option("--no-wait", "print the request ids and return at once")
      .option("--timeout <duration>", "how long to wait for the PIT", "10m"),
  ).action(
    action<CreateOpts>(async (ctx, o, cmd) => {
      const server = cmd.args[0];
      if ((server === undefined) === (o.group === undefined))
        throw new LifeboatError("USAGE", "give a SERVER or --group G (one of the two)", { exitCode: 2 });
      if (o.consistency !== undefined && !LEVELS.includes(o.consistency))
        throw new LifeboatError("USAGE", `--consistency wants one of ${LEVELS.join(", ")}`, { exitCode: 2 });
      const timeoutMs = parseDuration(o.timeout, "--timeout");
      const body = o.consistency !== undefined ? { consistency: o.consistency } : {};
      const out = await withApi(ctx, o, (api) =>
        server !== undefined
          ? createOne(api, server, body, o.wait, timeoutMs)
          : createGroup(api, o.group!, body, o.wait, timeoutMs),
      );
      if (ctx.json) printJson(out);
      else
        printLines(
          Object.entries(out).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`),
        );
    }),
  );
}

/** Asks for a PIT of one server over the API; with `wait`, polls its command until the PIT is made. */
export async function createOne(
  api: ApiClient,
  server: string,
  body: object,
  wait: boolean,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  const r = await api.call<{ commandId: string; jobId: string }>(
    `/api/v1/servers/${encodeURIComponent(server)}/pits`,
    { method: "POST", body },
  );
  if (!wait) return { commandId: r.commandId, jobId: r.jobId };
  const until = Date.now() + timeoutMs;
  for (;;) {
    const c = await api.call<CommandState>(`/api/v1/commands/${encodeURIComponent(r.commandId)}`);
    if (c.state === "done") return pitOf(c.result ?? {});
    if (c.state === "failed" || c.state === "expired") throw failure(c.error, `PIT of ${server}`);
    if (Date.now() >= until) throw timedOut(`server ${server}`, r.commandId, r.jobId);
    await delay(Math.min(POLL_MS, Math.max(0, until - Date.now())));
  }
}

async function createGroup(
  api: ApiClient,
  group: string,
  body: object,
  wait: boolean,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  const r = await api.call<{
    groupPitId: string;
    jobId: string;
    commands: { serverId: string; commandId: string }[];
  }>(`/api/v1/groups/${encodeURIComponent(group)}/pits`, { method: "POST", body });
  if (!wait) return { groupPitId: r.groupPitId, jobId: r.jobId, commands: r.commands };
  const until = Date.now() + timeoutMs;
  for (;;) {
    const g = await api.call<GroupPitState>(`/api/v1/group-pits/${encodeURIComponent(r.groupPitId)}`);
    if (g.state === "done")
      return {
        groupPitId: r.groupPitId,
        takenAt: g.takenAt,
        pits: g.members.map((m) => pitOf(m.result ?? {})),
      };
    if (g.state === "aborted" || g.state === "failed") {
      const failed = g.members.find((m) => m.error !== null && m.error.code !== "GROUP_PIT_ABORTED");
      const any = failed ?? g.members.find((m) => m.error !== null);
      throw failure(
        any?.error ?? null,
        `group PIT of ${group}${failed ? ` (server ${failed.serverId})` : ""}`,
      );
    }
    if (Date.now() >= until) throw timedOut(`group ${group}`, r.groupPitId, r.jobId);
    await delay(Math.min(POLL_MS, Math.max(0, until - Date.now())));
  }
}

/** The PIT as the command's result names it: id, seq, takenAt, consistency, disks (and the rest). */
function pitOf(result: Record<string, unknown>): Record<string, unknown> {
  const { pitId, ...rest } = result;
  return { id: pitId, ...rest };
}

function failure(error: CommandState["error"], what: string): LifeboatError {
  return new LifeboatError(error?.code ?? "PIT_FAILED", `${what}: ${error?.message ?? "failed"}`, {
    hint: "see `lifeboat jobs show JOB` and the agent's log on the server",
  });
}

function timedOut(what: string, id: string, jobId: string): LifeboatError {
  return new LifeboatError("PIT_TIMEOUT", `no PIT of ${what} yet (request ${id}, job ${jobId})`, {
    hint: "check that the agent is online with `lifeboat servers show SERVER` and `lifeboat agent status` on the server; the request may still finish (`lifeboat jobs show JOB`)",
  });
}
