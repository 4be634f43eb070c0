import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface ReplicatorView {
  id: string;
  name: string;
  address: string;
  state: string;
  online: boolean;
  drained?: boolean;
  lastSeenAt: string | null;
  assignedServers: string[];
}

/** `lifeboat replicators list|show|drain|undrain|decommission`, over the API. */
export function replicatorsCommand(): Command {
  const replicators = new Command("replicators").description("replicators at the recovery site");
  apiOptions(replicators.command("list").description("list replicators")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) =>
        api.call<{ replicators: ReplicatorView[] }>("/api/v1/replicators"),
      );
      if (ctx.json) printJson({ replicators: r.replicators });
      else
        printLines(
          r.replicators.map((x) =>
            [
              x.id,
              x.name,
              x.address,
              x.state,
              x.online ? "online" : "offline",
              `${x.assignedServers.length} server(s)`,
              x.drained ? "drained" : "in pool",
            ].join("\t"),
          ),
        );
    }),
  );
  apiOptions(
    replicators
      .command("show")
      .description("one replicator, by id or name")
      .argument("<replicator>", "id or name"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const key = cmd.args[0]!;
      const r = await withApi(ctx, o, (api) =>
        api.call<ReplicatorView & Record<string, unknown>>(`/api/v1/replicators/${encodeURIComponent(key)}`),
      );
      if (ctx.json) printJson(r);
      else
        printLines(
          Object.entries(r).map(
            ([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`,
          ),
        );
    }),
  );
  for (const verb of ["drain", "undrain"] as const) {
    apiOptions(
      replicators
        .command(verb)
        .description(
          verb === "drain"
            ? "move a replicator's pool servers to other replicators and give it no new ones (admin)"
            : "let a drained replicator take servers from the pool again (admin)",
        )
        .argument("<replicator>", "id or name"),
    ).action(
      action<ApiOpts>(async (ctx, o, cmd) => {
        const key = cmd.args[0]!;
        const r = await withApi(ctx, o, (api) =>
          api.call<ReplicatorView>(`/api/v1/replicators/${encodeURIComponent(key)}/${verb}`, {
            method: "POST",
            body: {},
          }),
        );
        if (ctx.json) printJson(r);
        else
          printLines([
            verb === "drain"
              ? `${r.name} drained: its ${r.assignedServers.length} pool server(s) move to other replicators within seconds`
              : `${r.name} takes servers from the pool again`,
          ]);
      }),
    );
  }
  apiOptions(
    replicators
      .command("decommission")
      .description("revoke a replicator's certificates (admin)")
      .argument("<replicator>", "id or name")
      .option("--yes", "do it (without, only say what would happen)"),
  ).action(
    action<ApiOpts & { yes?: boolean }>(async (ctx, o, cmd) => {
      await decommissionCommand(ctx.json, o, "replicators", cmd.args[0]!, (path) =>
        withApi(ctx, o, (api) => api.call(path, { method: "POST", body: {} })),
      );
    }),
  );
  return replicators;
}

/** Shared by `servers decommission` and `replicators decommission`: asks for --yes first. */
export async function decommissionCommand(
  json: boolean,
  o: { yes?: boolean },
  kind: "servers" | "replicators",
  key: string,
  post: (path: string) => Promise<unknown>,
): Promise<void> {
  const what = kind === "servers" ? "server" : "replicator";
  if (!o.yes) {
    throw new LifeboatError(
      "CONFIRMATION_REQUIRED",
      `this would decommission ${what} ${key}: its certificates are revoked and it is refused from its next connection on`,
      { hint: "add --yes to do it", exitCode: 2 },
    );
  }
  const r = (await post(`/api/v1/${kind}/${encodeURIComponent(key)}/decommission`)) as {
    id: string;
    name: string;
    revokedCertificates: number;
  };
  if (json) printJson(r);
  else
    printLines([
      `decommissioned ${what} ${r.id} (${r.name}); ${r.revokedCertificates} certificate(s) revoked`,
    ]);
}
