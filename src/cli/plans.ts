import { Command, Option } from "commander";
import { LifeboatError } from "../base/index.js";
import { PROFILE_NAMES, TARGET_KINDS } from "../launch/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { followJob, formatJobLine } from "./follow-job.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface PlanView {
  id: string;
  name: string;
  description: string | null;
  waves: { name: string; servers: { id: string; name: string }[] }[];
  options: Record<string, unknown>;
}
interface JobView {
  id: string;
  state: string;
  result: Record<string, unknown> | null;
}

/** "db:erp-db,erp-db2" → a wave named db of those servers (a name alone: "wave-N"). */
export function parseWave(text: string, n: number): { name: string; servers: string[] } {
  const m = /^(?:([A-Za-z0-9][A-Za-z0-9._-]*):)?(.+)$/.exec(text);
  const servers = (m?.[2] ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (!m || servers.length === 0)
    throw new LifeboatError("USAGE", `--wave ${JSON.stringify(text)} names no server`, {
      hint: "--wave NAME:SERVER[,SERVER...], once per wave, in launch order",
      exitCode: 2,
    });
  return { name: m[1] ?? `wave-${n}`, servers };
}

/** `lifeboat plans create|list|show|run`: recovery plans over the API. */
export function plansCommand(): Command {
  const plans = new Command("plans").description("recovery plans: servers launched together, in waves");
  apiOptions(
    plans
      .command("create")
      .description("save a plan (operator)")
      .argument("<name>", "the plan's name")
      .requiredOption(
        "--wave <name:servers...>",
        "NAME:SERVER[,SERVER...], once per wave, in launch order",
        (v: string, prev: string[] = []) => [...prev, v],
      )
      .option("--description <text>", "what the plan is for")
      .addOption(new Option("--target <target>", "target of every wave").choices([...TARGET_KINDS]))
      .addOption(new Option("--profile <profile>", "boot profile to check").choices([...PROFILE_NAMES]))
      .option("--convert", "regenerate initramfs for the profile where needed")
      .option("--force", "boot even when not ready"),
  ).action(
    action<
      ApiOpts & {
        wave: string[];
        description?: string;
        target?: string;
        profile?: string;
        convert?: boolean;
        force?: boolean;
      }
    >(async (ctx, o, cmd) => {
      const body = {
        name: cmd.args[0]!,
        waves: o.wave.map((w, i) => parseWave(w, i + 1)),
        ...(o.description !== undefined ? { description: o.description } : {}),
        options: {
          ...(o.target !== undefined ? { target: o.target } : {}),
          ...(o.profile !== undefined ? { profile: o.profile } : {}),
          ...(o.convert ? { convert: true } : {}),
          ...(o.force ? { force: true } : {}),
        },
      };
      const r = await withApi(ctx, o, (api) =>
        api.call<{ plan: PlanView }>("/api/v1/plans", { method: "POST", body }),
      );
      if (ctx.json) printJson(r.plan);
      else printLines([r.plan.id]);
    }),
  );
  apiOptions(plans.command("list").description("list plans")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ plans: PlanView[] }>("/api/v1/plans"));
      if (ctx.json) printJson(r);
      else
        printLines(
          r.plans.map(
            (p) =>
              `${p.id}\t${p.name}\t${p.waves.map((w) => `${w.name}:${w.servers.map((s) => s.name).join(",")}`).join(" → ")}`,
          ),
        );
    }),
  );
  apiOptions(
    plans.command("show").description("one plan and its recent runs").argument("<plan>", "id or name"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const r = await withApi(ctx, o, (api) =>
        api.call<{ plan: PlanView; runs: JobView[] }>(`/api/v1/plans/${encodeURIComponent(cmd.args[0]!)}`),
      );
      if (ctx.json) printJson(r);
      else
        printLines([
          `${r.plan.name} (${r.plan.id})${r.plan.description ? `: ${r.plan.description}` : ""}`,
          ...r.plan.waves.map(
            (w, i) => `  wave ${i + 1} ${w.name}: ${w.servers.map((s) => s.name).join(", ")}`,
          ),
          `  options: ${JSON.stringify(r.plan.options)}`,
          ...r.runs.map((j) => `  run ${j.id}: ${j.state}`),
        ]);
    }),
  );
  apiOptions(
    plans
      .command("run")
      .description(
        "run a plan: a drill (default) or a recovery of its servers at one point in time (operator)",
      )
      .argument("<plan>", "id or name")
      .option("--at <time>", "the point in time (ISO); default now")
      .option("--recovery", "a real recovery instead of a drill")
      .option("--detach", "print the job id and return at once"),
  ).action(
    action<ApiOpts & { at?: string; recovery?: boolean; detach?: boolean }>(async (ctx, o, cmd) => {
      const body = {
        mode: o.recovery ? "recovery" : "drill",
        ...(o.at !== undefined ? { at: new Date(o.at).toISOString() } : {}),
      };
      return withApi(ctx, o, async (api) => {
        const { job } = await api.call<{ job: JobView }>(
          `/api/v1/plans/${encodeURIComponent(cmd.args[0]!)}/run`,
          { method: "POST", body },
        );
        if (o.detach) {
          if (ctx.json) printJson({ job });
          else printLines([job.id]);
          return 0;
        }
        const state = await followJob(api, job.id, (l) => {
          if (!ctx.json) process.stderr.write(`${formatJobLine(l)}\n`);
        });
        const final = await api.call<{ job: JobView }>(`/api/v1/jobs/${encodeURIComponent(job.id)}`);
        if (ctx.json) printJson(final);
        else printLines([`${final.job.id}\t${final.job.state}`]);
        return state === "succeeded" ? 0 : 1;
      });
    }),
  );
  return plans;
}
