import { writeFile } from "node:fs/promises";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { parseDuration, parseIntOption } from "./context.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface TokenView {
  id: string;
  role: string;
  usesAllowed: number;
  usesCount: number;
  expiresAt: string;
  serverName: string | null;
  revokedAt: string | null;
}

/** `lifeboat token create|list|revoke`: install tokens, over the API (admin key). */
export function tokenCommand(): Command {
  const token = new Command("token").description("install tokens agents and replicators register with");

  apiOptions(token.command("create").description("make an install token; its secret is shown once"))
    .option("--role <role>", "agent or replicator", "agent")
    .option("--uses <n>", "how many registrations it allows", "1")
    .option("--ttl <duration>", "how long it lives, at most 24h", "1h")
    .option("--server-name <name>", "the name the registering server gets")
    .option(
      "--recovery-of <job>",
      "for the agent of this recovery job's recovered instance (failback source)",
    )
    .option("--out <file>", "write the token to this file (0600) instead of standard output")
    .action(
      action<
        ApiOpts & {
          role: string;
          uses: string;
          ttl: string;
          serverName?: string;
          recoveryOf?: string;
          out?: string;
        }
      >(async (ctx, o) => {
        if (o.role !== "agent" && o.role !== "replicator") {
          throw new LifeboatError("USAGE", `--role ${o.role}: use agent or replicator`, { exitCode: 2 });
        }
        const ttlMs = parseDuration(o.ttl, "--ttl");
        if (ttlMs < 1000 || ttlMs > 86_400_000) {
          throw new LifeboatError("USAGE", `--ttl ${o.ttl}: give 1s to 24h`, { exitCode: 2 });
        }
        const made = await withApi(ctx, o, (api) =>
          api.call<TokenView & { token: string }>("/api/v1/tokens", {
            method: "POST",
            body: {
              role: o.role,
              uses: parseIntOption(o.uses, "--uses"),
              ttlSeconds: Math.floor(ttlMs / 1000),
              ...(o.serverName !== undefined ? { serverName: o.serverName } : {}),
              ...(o.recoveryOf !== undefined ? { recoveryOf: o.recoveryOf } : {}),
            },
          }),
        );
        if (o.out !== undefined) {
          await writeFile(o.out, `${made.token}\n`, { mode: 0o600, flag: "wx" });
          const { token: _secret, ...view } = made;
          if (ctx.json) printJson({ ...view, file: o.out });
          else printLines([o.out]);
        } else if (ctx.json) printJson(made);
        else printLines([made.token]);
        process.stderr.write(
          `token ${made.id} (${made.role}, ${made.usesAllowed} use(s)) expires ${made.expiresAt}\n`,
        );
      }),
    );

  apiOptions(token.command("list").description("list install tokens (without secrets)")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<{ tokens: TokenView[] }>("/api/v1/tokens"));
      if (ctx.json) printJson(r);
      else
        printLines(
          r.tokens.map((t) =>
            [
              t.id,
              t.role,
              `${t.usesCount}/${t.usesAllowed}`,
              t.revokedAt ? "revoked" : `expires ${t.expiresAt}`,
              t.serverName ?? "-",
            ].join("\t"),
          ),
        );
    }),
  );

  apiOptions(
    token.command("revoke").description("revoke an install token").argument("<id>", "the token's id"),
  ).action(
    action<ApiOpts>(async (ctx, o, cmd) => {
      const id = cmd.args[0]!;
      const r = await withApi(ctx, o, (api) =>
        api.call<TokenView>(`/api/v1/tokens/${encodeURIComponent(id)}`, { method: "DELETE" }),
      );
      if (ctx.json) printJson(r);
      else printLines([`${r.id} revoked`]);
    }),
  );
  return token;
}
