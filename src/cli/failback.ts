import { setTimeout as delay } from "node:timers/promises";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./action.js";
import { parseDuration } from "./context.js";

interface FailbackView {
  id: string;
  jobId: string;
  state: string;
  source: { name: string };
  target: { name: string };
  disks: { source: number; target: number; sizeBytes: number }[];
  pass: number;
  passKind: string | null;
  completedPass: number;
  lagSeconds: number | null;
  backlog: { chunks: number; bytes: number } | null;
  bytesSent: number;
  chunksSent: number;
  chunksCompared: number;
  cutoverPitId: string | null;
  verify: { pass: number; chunks: number; mismatched: number } | null;
  error: { code: string; message: string } | null;
}

function lines(f: FailbackView): string[] {
  return [
    `failback ${f.id} (job ${f.jobId}): ${f.source.name} → ${f.target.name}, ${f.state}`,
    `pass ${f.pass}${f.passKind ? ` (${f.passKind})` : ""}, ${f.completedPass} complete; lag ${f.lagSeconds ?? "-"} s` +
      (f.backlog ? `; backlog ${f.backlog.chunks} chunks (${formatBytes(f.backlog.bytes)} at most)` : ""),
    `sent ${f.bytesSent} bytes: ${f.chunksSent} of ${f.chunksCompared} compared chunks differed`,
    ...(f.cutoverPitId ? [`cut-over PIT ${f.cutoverPitId}`] : []),
    ...(f.verify ? [`verify: ${f.verify.chunks} chunks, ${f.verify.mismatched} differed`] : []),
    ...(f.error ? [`target reports ${f.error.code}: ${f.error.message}`] : []),
  ];
}

/** `lifeboat failback start|list|show|cutover|cancel`, over the API. */
export function failbackCommand(): Command {
  const failback = new Command("failback").description(
    "move back from a recovered instance to the original server, sending only what differs",
  );
  apiOptions(
    failback
      .command("start")
      .description(
        "pair a recovered instance (or its recovery job) with the original server, whose agent switches to receive mode",
      )
      .argument("<source>", "recovery job id, or the recovered instance's server")
      .option("--to <server>", "the original server (default: the recovery job's server)"),
  ).action(
    action<ApiOpts & { to?: string }>(async (ctx, o, cmd) => {
      const f = await withApi(ctx, o, (api) =>
        api.call<FailbackView>("/api/v1/failbacks", {
          method: "POST",
          body: { source: cmd.args[0]!, ...(o.to !== undefined ? { to: o.to } : {}) },
        }),
      );
      if (ctx.json) printJson(f);
      else printLines([...lines(f), "follow it with `lifeboat failback show` or `lifeboat jobs logs`"]);
    }),
  );
  apiOptions(failback.command("list").description("list failbacks, newest first")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ failbacks: FailbackView[] }>("/api/v1/failbacks"));
      if (ctx.json) printJson(r);
      else
        printLines(
          r.failbacks.map((f) =>
            [
              f.id,
              f.state,
              `${f.source.name}→${f.target.name}`,
              `pass ${f.pass}`,
              `${f.bytesSent} bytes`,
            ].join("\t"),
          ),
        );
    }),
  );
  apiOptions(
    failback
      .command("show")
      .description("one failback, by id or job id")
      .argument("<failback>", "id or job id"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const f = await withApi(ctx, o, (api) =>
        api.call<FailbackView>(`/api/v1/failbacks/${encodeURIComponent(cmd.args[0]!)}`),
      );
      if (ctx.json) printJson(f);
      else printLines(lines(f));
    }),
  );
  apiOptions(
    failback
      .command("cutover")
      .description(
        "final consistency point on the recovered instance (freeze, ship, thaw), sync and verify the original disks block for block",
      )
      .argument("<failback>", "id or job id")
      .option("--wait <duration>", "wait until the failback is ready (or failed), at most this long"),
  ).action(
    action<ApiOpts & { wait?: string }>(async (ctx, o, cmd) => {
      const key = encodeURIComponent(cmd.args[0]!);
      const waitMs = o.wait !== undefined ? parseDuration(o.wait, "--wait") : 0;
      const f = await withApi(ctx, o, async (api) => {
        let v = await api.call<FailbackView>(`/api/v1/failbacks/${key}/cutover`, {
          method: "POST",
          body: {},
        });
        const until = Date.now() + waitMs;
        while (waitMs > 0 && (v.state === "cutover" || v.state === "syncing") && Date.now() < until) {
          await delay(1000);
          v = await api.call<FailbackView>(`/api/v1/failbacks/${key}`);
        }
        return v;
      });
      if (ctx.json) printJson(f);
      else
        printLines([
          ...lines(f),
          f.state === "ready"
            ? `ready to boot: ${f.target.name}'s disks equal the cut-over PIT; shut ${f.source.name} down and start ${f.target.name}`
            : "the target syncs to the cut-over PIT and verifies it; `lifeboat failback show` says when it is ready",
        ]);
      if (waitMs > 0 && f.state !== "ready")
        throw new LifeboatError("FAILBACK_NOT_READY", `failback ${f.id} is ${f.state}, not ready`, {
          hint: "see `lifeboat jobs logs` of its job for what the target reported",
          exitCode: 1,
        });
    }),
  );
  apiOptions(
    failback
      .command("cancel")
      .description("stop a failback; the original server stays fenced until a failback completes")
      .argument("<failback>", "id or job id"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const f = await withApi(ctx, o, (api) =>
        api.call<FailbackView>(`/api/v1/failbacks/${encodeURIComponent(cmd.args[0]!)}/cancel`, {
          method: "POST",
          body: {},
        }),
      );
      if (ctx.json) printJson(f);
      else printLines(lines(f));
    }),
  );
  return failback;
}
