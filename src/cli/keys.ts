import { writeFile } from "node:fs/promises";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface KeyView {
  id: string;
  name: string;
  role: string;
  createdAt: string;
  createdBy: string | null;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

const ROLES = ["viewer", "operator", "admin"];

/** `lifeboat keys create|list|revoke`: operator API keys, over the API (admin key). */
export function keysCommand(): Command {
  const keys = new Command("keys").description(
    "API keys for people and tools: viewer (read only), operator, admin (docs/security.md)",
  );

  apiOptions(keys.command("create").description("make an API key; it is shown once"))
    .requiredOption("--name <name>", 'what the key is for ("prometheus", "alice")')
    .option("--role <role>", "viewer (reads only), operator or admin", "viewer")
    .option("--out <file>", "write the key to this file (0600, new) instead of standard output")
    .action(
      action<ApiOpts & { name: string; role: string; out?: string }>(async (ctx, o) => {
        if (!ROLES.includes(o.role))
          throw new LifeboatError("USAGE", `--role ${o.role}: use viewer, operator or admin`, {
            exitCode: 2,
          });
        const made = await withApi(ctx, o, (api) =>
          api.call<KeyView & { key: string }>("/api/v1/api-keys", {
            method: "POST",
            body: { name: o.name, role: o.role },
          }),
        );
        const { key: _secret, ...shown } = made;
        if (o.out !== undefined) {
          await writeFile(o.out, `${made.key}\n`, { mode: 0o600, flag: "wx" });
          if (ctx.json) printJson({ ...shown, file: o.out });
          else printLines([o.out]);
        } else if (ctx.json) printJson(made);
        else printLines([made.key]);
        process.stderr.write(`API key ${made.id} (${made.role}, "${made.name}") created\n`);
      }),
    );

  apiOptions(keys.command("list").description("list API keys (without secrets)")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ keys: KeyView[] }>("/api/v1/api-keys"));
      if (ctx.json) printJson(r);
      else
        printLines(
          r.keys.map((k) =>
            [
              k.id,
              k.role,
              k.revokedAt ? `revoked ${k.revokedAt}` : `last used ${k.lastUsedAt ?? "never"}`,
              k.name,
            ].join("\t"),
          ),
        );
    }),
  );

  apiOptions(
    keys
      .command("revoke")
      .description("revoke an API key; its console sessions end too")
      .argument("<id>", "the key's id (key_...)"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const id = cmd.args[0]!;
      const r = await withApi(ctx, o, (api) =>
        api.call<KeyView>(`/api/v1/api-keys/${encodeURIComponent(id)}`, { method: "DELETE" }),
      );
      if (ctx.json) printJson(r);
      else printLines([`${r.id} revoked`]);
    }),
  );
  return keys;
}
