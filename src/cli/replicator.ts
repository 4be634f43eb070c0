import { readFile } from "node:fs/promises";
import path from "node:path";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import { requireOption } from "./context.js";
import { action } from "./store.js";

interface StartOpts {
  endpoint?: string;
  tokenFile?: string;
  caFile?: string;
  dataDir: string;
  listen: string;
  address?: string;
  name?: string;
}

/** `lifeboat replicator start`: a replicator in a process of its own (src/replicator/standalone.ts). */
export function replicatorCommand(): Command {
  const replicator = new Command("replicator").description("a separate replicator process");
  replicator
    .command("start")
    .description("register (the first time) and serve agents' replication streams until SIGTERM")
    .option("--endpoint <url>", "the control plane, https://host[:port]")
    .option("--token-file <file>", "install token of role replicator (only the first time)")
    .option("--ca-file <file>", "the Lifeboat CA certificate (default: D/ca.pem once registered)")
    .option(
      "--data-dir <dir>",
      "where its identity and the repository key live",
      "/var/lib/lifeboat-replicator",
    )
    .option("--listen <addr>", "host:port agents connect to", "0.0.0.0:8443")
    .option("--address <addr>", "host:port agents are told to use (default: the listen address)")
    .option("--name <name>", "its name among replicators (default: the host name)")
    .action(
      action<StartOpts>(async (ctx, o) => {
        const endpoint = requireOption(o.endpoint, "--endpoint");
        const caFile = o.caFile ?? path.join(o.dataDir, "ca.pem");
        const caPem = await readFile(caFile, "utf8").catch((err: unknown) => {
          throw new LifeboatError("USAGE", `cannot read the CA certificate ${caFile}`, {
            hint: "give --ca-file (the server's ca.pem) the first time",
            cause: err,
            exitCode: 2,
          });
        });
        const token = o.tokenFile ? (await readFile(o.tokenFile, "utf8")).trim() : undefined;
        const { startStandaloneReplicator } = await import("../replicator/standalone.js");
        const r = await startStandaloneReplicator({
          endpoint,
          caPem,
          dataDir: o.dataDir,
          listen: o.listen,
          ...(o.address ? { address: o.address } : {}),
          ...(o.name ? { name: o.name } : {}),
          ...(token ? { token } : {}),
          logger: ctx.logger,
        });
        process.stdout.write(`replicator ${r.replicatorId} serving on ${r.address}\n`);
        await new Promise<void>((resolve) => {
          process.once("SIGTERM", resolve);
          process.once("SIGINT", resolve);
        });
        await r.close();
      }),
    );
  return replicator;
}
