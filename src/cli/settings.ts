import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface SettingsView {
  kind: string;
  scope: string;
  settings: Record<string, unknown>;
  sources: Record<string, string>;
  overrides: Record<string, unknown>;
}
interface SettingsOpts extends ApiOpts {
  server?: string;
  kind: string;
}

const KINDS = ["replication", "launch"];

function settingsPath(o: SettingsOpts): string {
  if (!KINDS.includes(o.kind))
    throw new LifeboatError("USAGE", `--kind ${o.kind} is not one of ${KINDS.join(", ")}`, {
      hint: "see --help",
      exitCode: 2,
    });
  return o.server === undefined
    ? `/api/v1/settings/${o.kind}`
    : `/api/v1/servers/${encodeURIComponent(o.server)}/settings/${o.kind}`;
}

/** KEY=VALUE: VALUE as JSON when it parses as JSON, else the string itself; KEY=null clears the override. */
export function parseAssignments(args: string[]): Record<string, unknown> {
  const patch: Record<string, unknown> = {};
  for (const a of args) {
    const eq = a.indexOf("=");
    if (eq <= 0)
      throw new LifeboatError("USAGE", `${a} is not KEY=VALUE`, {
        hint: "e.g. bandwidthMbps=100 consistency=crash tags='[\"db\"]'",
        exitCode: 2,
      });
    const raw = a.slice(eq + 1);
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      value = raw;
    }
    patch[a.slice(0, eq)] = value;
  }
  return patch;
}

function print(json: boolean, v: SettingsView): void {
  if (json) printJson(v);
  else
    printLines(
      Object.entries(v.settings).map(([k, val]) => `${k}\t${JSON.stringify(val)}\t(${v.sources[k] ?? "?"})`),
    );
}

const common = (c: Command) =>
  apiOptions(c)
    .option("--server <id>", "a server's settings (id or name); without, the default template")
    .option("--kind <kind>", "replication or launch", "replication");

/** `lifeboat settings get|set`: replication and launch settings, over the API. */
export function settingsCommand(): Command {
  const settings = new Command("settings").description("replication and launch settings");
  common(settings.command("get").description("effective settings and where each value comes from")).action(
    action<SettingsOpts>(async (ctx, o) => {
      const path = settingsPath(o);
      print(ctx.json, await withApi(ctx, o, (api) => api.call<SettingsView>(path)));
    }),
  );
  common(
    settings
      .command("set")
      .description("override settings: KEY=VALUE ... (JSON values; KEY=null clears an override)")
      .argument("<assignments...>", "KEY=VALUE"),
  ).action(
    action<SettingsOpts>(async (ctx, o, cmd) => {
      const path = settingsPath(o);
      const body = parseAssignments(cmd.args);
      print(ctx.json, await withApi(ctx, o, (api) => api.call<SettingsView>(path, { method: "PUT", body })));
    }),
  );
  return settings;
}
