import { readFile } from "node:fs/promises";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface WebhookView {
  id: string;
  url: string;
  events: string[];
  customCa: boolean;
  cursorSeq: number;
  failures: number;
  nextAttemptAt: string;
  lastDeliveredAt: string | null;
  lastError: string | null;
}

/** `lifeboat webhooks add|list|remove`: signed event deliveries, over the API (admin key). */
export function webhooksCommand(): Command {
  const webhooks = new Command("webhooks").description(
    "send events to URLs, signed (docs/metrics-and-events.md)",
  );

  apiOptions(
    webhooks
      .command("add")
      .description("add a webhook; its signing secret is shown once")
      .argument("<url>", "https:// URL that receives the events (http:// only to localhost)"),
  )
    .option("--events <types>", "comma-separated event types (default: every type)")
    .option("--webhook-ca-file <file>", "CA certificate (PEM) the receiver's certificate must chain to")
    .action(
      action<ApiOpts & { events?: string; webhookCaFile?: string }>(async (ctx, o, cmd) => {
        const url = cmd.args[0]!;
        const events = o.events
          ?.split(",")
          .map((t) => t.trim())
          .filter((t) => t !== "");
        if (events !== undefined && events.length === 0)
          throw new LifeboatError("USAGE", "--events: give at least one event type", { exitCode: 2 });
        const caPem = o.webhookCaFile === undefined ? undefined : await readFile(o.webhookCaFile, "utf8");
        const made = await withApi(ctx, o, (api) =>
          api.call<WebhookView & { secret: string }>("/api/v1/webhooks", {
            method: "POST",
            body: { url, ...(events ? { events } : {}), ...(caPem !== undefined ? { caPem } : {}) },
          }),
        );
        if (ctx.json) printJson(made);
        else {
          printLines([made.secret]);
          process.stderr.write(
            `webhook ${made.id} → ${made.url} (${made.events.join(",")}); the line above is its signing secret, shown once\n`,
          );
        }
      }),
    );

  apiOptions(webhooks.command("list").description("list webhooks and their delivery state")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ webhooks: WebhookView[] }>("/api/v1/webhooks"));
      if (ctx.json) printJson(r);
      else
        printLines(
          r.webhooks.map((w) =>
            [
              w.id,
              w.url,
              w.events.join(","),
              `seq ${w.cursorSeq}`,
              w.failures > 0
                ? `${w.failures} failure(s), next ${w.nextAttemptAt}: ${w.lastError ?? ""}`
                : "ok",
            ].join("\t"),
          ),
        );
    }),
  );

  apiOptions(
    webhooks.command("remove").description("remove a webhook").argument("<id>", "the webhook's id"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const id = cmd.args[0]!;
      const r = await withApi(ctx, o, (api) =>
        api.call<WebhookView>(`/api/v1/webhooks/${encodeURIComponent(id)}`, { method: "DELETE" }),
      );
      if (ctx.json) printJson(r);
      else printLines([`${r.id} removed`]);
    }),
  );
  return webhooks;
}
