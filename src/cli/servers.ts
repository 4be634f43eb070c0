import { createInterface } from "node:readline/promises";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { decommissionCommand } from "./replicators.js";
import { action } from "./store.js";

interface ServerView {
  id: string;
  name: string;
  state: string;
  online: boolean;
  lagSeconds: number | null;
  backlogBytes: number | null;
  lastSeenAt: string | null;
  group?: string | null;
  /** docs/launch-readiness.md, "Readiness before disaster"; absent from older control planes. */
  readiness?: Readiness | null;
}

interface Readiness {
  profile: string;
  ready: boolean;
  verdict: string;
  problems: { code: string; severity: string; message: string; remedy: string }[];
  checkedAt: string;
}

/** The READY column: "ready:kvm", "NOT-READY:xen", or "-" when the agent has not reported. */
export function readyCell(r: Readiness | null | undefined): string {
  if (!r) return "-";
  return `${r.ready ? "ready" : "NOT-READY"}:${r.profile}`;
}

/** `servers show`: the readiness line, then each problem with its remedy. */
export function readinessLines(r: Readiness | null | undefined): string[] {
  if (!r) return ["readiness: unknown (the agent has not reported its boot inventory yet)"];
  return [
    `readiness: ${r.verdict} (checked ${r.checkedAt} by the agent)`,
    ...r.problems.flatMap((p) => [`  ${p.severity} ${p.code}: ${p.message}`, `    remedy: ${p.remedy}`]),
  ];
}

/**
 * Purging cannot be undone: without --yes, a terminal asks to type the
 * server's id or name as given; without a terminal it is a usage error.
 */
async function confirmByName(key: string): Promise<void> {
  if (!process.stdin.isTTY)
    throw new LifeboatError(
      "CONFIRMATION_REQUIRED",
      `this would forget every PIT of server ${key}, its replica head and its catalog rows; it cannot be undone`,
      { hint: "add --yes to do it without a terminal", exitCode: 2 },
    );
  process.stderr.write(
    `this forgets every PIT of server ${key}, its replica head and its catalog rows; it cannot be undone\n`,
  );
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = (await rl.question(`type the server's name (${key}) to confirm: `)).trim();
    if (answer !== key)
      throw new LifeboatError("CONFIRMATION_REQUIRED", `the answer was not ${key}: nothing purged`, {
        hint: "type the name exactly as given, or add --yes",
        exitCode: 2,
      });
  } finally {
    rl.close();
  }
}

/** `lifeboat servers list|show`: protected servers, over the API (any role). */
export function serversCommand(): Command {
  const servers = new Command("servers").description("protected source servers");
  apiOptions(servers.command("list").description("list servers")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ servers: ServerView[] }>("/api/v1/servers"));
      if (ctx.json) printJson({ servers: r.servers });
      else
        printLines(
          r.servers.map((s) =>
            [
              s.id,
              s.name,
              s.state,
              s.online ? "online" : "offline",
              s.lagSeconds === null ? "-" : `lag ${s.lagSeconds}s`,
              readyCell(s.readiness),
            ].join("\t"),
          ),
        );
    }),
  );
  apiOptions(
    servers.command("show").description("one server, by id or name").argument("<server>", "id or name"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const key = cmd.args[0]!;
      const s = await withApi(ctx, o, (api) =>
        api.call<ServerView & Record<string, unknown>>(`/api/v1/servers/${encodeURIComponent(key)}`),
      );
      if (ctx.json) printJson(s);
      else {
        const { readiness, ...rest } = s;
        // The boot inventory is long; its verdict is the readiness line (--json has all of it).
        const inventory = rest.inventory as Record<string, unknown> | null | undefined;
        if (inventory && "boot" in inventory) {
          const { boot: _boot, ...others } = inventory;
          rest.inventory = others;
        }
        printLines([
          ...Object.entries(rest).map(
            ([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`,
          ),
          ...readinessLines(readiness),
        ]);
      }
    }),
  );
  apiOptions(
    servers
      .command("decommission")
      .description("revoke a server's certificates and stop accepting its agent (admin)")
      .argument("<server>", "id or name")
      .option("--yes", "do it (without, only say what would happen)"),
  ).action(
    action<ApiOpts & { yes?: boolean }>(async (ctx, o, cmd) => {
      await decommissionCommand(ctx.json, o, "servers", cmd.args[0]!, (path) =>
        withApi(ctx, o, (api) => api.call(path, { method: "POST", body: {} })),
      );
    }),
  );
  apiOptions(
    servers
      .command("purge")
      .description(
        "forget every PIT, the replica head and the catalog rows of a decommissioned server (admin); space is freed at the next `store gc`",
      )
      .argument("<server>", "id or name")
      .option("--yes", "do not ask (without it, a terminal asks to type the server's name)"),
  ).action(
    action<ApiOpts & { yes?: boolean }>(async (ctx, o, cmd) => {
      const key = cmd.args[0]!;
      if (!o.yes) await confirmByName(key);
      const r = await withApi(ctx, o, (api) =>
        api.call<{ id: string; name: string; pitsForgotten: number; catalogRows: number }>(
          `/api/v1/servers/${encodeURIComponent(key)}/purge`,
          { method: "POST", body: {} },
        ),
      );
      if (ctx.json) printJson(r);
      else
        printLines([
          `purged server ${r.id} (${r.name}): ${r.pitsForgotten} PIT(s) forgotten, replica head removed, ${r.catalogRows} catalog row(s) deleted`,
          "the space is freed at the next `lifeboat store gc`",
        ]);
    }),
  );
  apiOptions(
    servers
      .command("group")
      .description("put a server in a consistency group, or (--none) take it out (operator)")
      .argument("<server>", "id or name")
      .argument("[group]", "the group: lowercase letters, digits and dashes")
      .option("--none", "take the server out of its group"),
  ).action(
    action<ApiOpts & { none?: boolean }>(async (ctx, o, cmd) => {
      const [key, group] = cmd.args as [string, string | undefined];
      if ((group === undefined) === (o.none !== true))
        throw new LifeboatError("USAGE", "give a GROUP or --none (one of the two)", { exitCode: 2 });
      const r = await withApi(ctx, o, (api) =>
        api.call<{ id: string; name: string; group: string | null }>(
          `/api/v1/servers/${encodeURIComponent(key)}`,
          {
            method: "PATCH",
            body: { group: group ?? null },
          },
        ),
      );
      if (ctx.json) printJson(r);
      else printLines([`${r.name}: ${r.group === null ? "in no group" : `group ${r.group}`}`]);
    }),
  );
  return servers;
}
