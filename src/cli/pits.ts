import { Command } from "commander";
import { type DamagedPit, listPits } from "../store/index.js";
import { withRepo } from "./context.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./store.js";

export function pitsCommand(): Command {
  const pits = new Command("pits").description("point-in-time snapshots");
  pits
    .command("list")
    .description("list PITs, oldest first")
    .option("--repo <location>", "repository: a directory or s3://bucket/prefix?endpoint=...")
    .option("--key-file <file>", "repository key")
    .option("--server <name>", "only this server's PITs")
    .action(
      action<{ repo?: string; keyFile?: string; server?: string }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const damaged: DamagedPit[] = [];
          const list = await listPits(repo, { ...(o.server ? { server: o.server } : {}), damaged });
          for (const d of damaged)
            process.stderr.write(`warning: PIT ${d.id} cannot be read [${d.code}]: ${d.message}\n`);
          if (ctx.json) printJson({ pits: list, damaged });
          else
            printLines(
              list.map(
                (p) =>
                  `${p.id}  ${p.server.padEnd(16)} #${String(p.seq).padEnd(4)} ${p.time}  ${p.consistency.padEnd(11)} ${p.disks.length} disk(s), ${formatBytes(p.disks.reduce((n, d) => n + d.sizeBytes, 0))}`,
              ),
            );
        }),
      ),
    );
  return pits;
}
