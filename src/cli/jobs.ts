import { Command } from "commander";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";
import { FINISHED_STATES, followJob, formatJobLine } from "./follow-job.js";

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
  apiOptions(
    jobs
      .command("logs")
      .description("a job's log")
      .argument("<job>", "job id")
      .option("--follow", "keep printing new lines until the job ends"),
  ).action(
    action<ApiOpts & { follow?: boolean }>(async (ctx, o, cmd) => {
      const id = cmd.args[0]!;
      return withApi(ctx, o, async (api) => {
        if (o.follow) {
          const state = await followJob(api, id, (l) =>
            ctx.json ? printJson(l) : printLines([formatJobLine(l)]),
          );
          // Like `lifeboat launch`: the job's outcome is the exit code.
          return state === "succeeded" ? 0 : 1;
        }
        const r = await api.call<{ log: JobLogLine[] }>(`/api/v1/jobs/${encodeURIComponent(id)}`);
        if (ctx.json) printJson({ log: r.log });
        else printLines(r.log.map(formatJobLine));
        return undefined;
      });
    }),
  );
  apiOptions(
    jobs
      .command("terminate")
      .description(
        "stop a job; a drill's outputs (images, VM) are removed, a failback is cancelled (operator)",
      )
      .argument("<job>", "job id")
      .option("--no-wait", "return once the request is recorded"),
  ).action(
    action<ApiOpts & { wait: boolean }>(async (ctx, o, cmd) => {
      const id = encodeURIComponent(cmd.args[0]!);
      await withApi(ctx, o, async (api) => {
        let r = await api.call<{ job: JobView }>(`/api/v1/jobs/${id}/terminate`, {
          method: "POST",
          body: {},
        });
        for (let i = 0; o.wait && r.job.state !== "terminated" && i < 600; i++) {
          await new Promise((res) => setTimeout(res, 500));
          r = await api.call<{ job: JobView }>(`/api/v1/jobs/${id}`);
          if (FINISHED_STATES.includes(r.job.state) && r.job.state !== "terminated" && r.job.type !== "drill")
            break;
        }
        if (ctx.json) printJson(r);
        else printLines([`${r.job.id}\t${r.job.state}`]);
      });
    }),
  );
  return jobs;
}
