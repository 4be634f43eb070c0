import { Command } from "commander";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface JobView {
  id: string;
  type: string;
  state: string;
  serverIds: string[];
  createdAt: string;
  updatedAt: string;
}
interface JobLogLine {
  seq: number;
  at: string;
  level: string;
  message: string;
}

/** `lifeboat jobs list|show`: drills, recoveries and failbacks, over the API (any role). */
export function jobsCommand(): Command {
  const jobs = new Command("jobs").description("drill, recovery and failback jobs");
  apiOptions(
    jobs
      .command("list")
      .description("list jobs, newest first")
      .option("--server <server>", "only jobs of this server (id or name)")
      .option("--state <state>", "only jobs in this state"),
  ).action(
    action<ApiOpts & { server?: string; state?: string }>(async (ctx, o) => {
      const q = new URLSearchParams();
      if (o.server !== undefined) q.set("server", o.server);
      if (o.state !== undefined) q.set("state", o.state);
      const qs = q.size > 0 ? `?${q.toString()}` : "";
      const r = await withApi(ctx, o, (api) => api.call<{ jobs: JobView[] }>(`/api/v1/jobs${qs}`));
      if (ctx.json) printJson({ jobs: r.jobs });
      else
        printLines(r.jobs.map((j) => [j.id, j.type, j.state, j.serverIds.join(","), j.createdAt].join("\t")));
    }),
  );
  apiOptions(jobs.command("show").description("one job and its step log").argument("<job>", "job id")).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const id = cmd.args[0]!;
      const r = await withApi(ctx, o, (api) =>
        api.call<{ job: JobView & Record<string, unknown>; log: JobLogLine[] }>(
          `/api/v1/jobs/${encodeURIComponent(id)}`,
        ),
      );
      if (ctx.json) printJson(r);
      else
        printLines([
          ...Object.entries(r.job).map(
            ([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`,
          ),
          ...r.log.map((l) => `${l.at} ${l.level.padEnd(5)} ${l.message}`),
        ]);
    }),
  );
  return jobs;
}
