import path from "node:path";
import { Command } from "commander";
import { DEFAULT_DATA_DIR, dataPaths, initServer, loadConfig, startServer } from "../control/index.js";
import { createLogger } from "../base/index.js";
import { action } from "./store.js";
import { printJson, printLines } from "./output.js";

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

interface InitOpts {
  dataDir?: string;
  db?: string;
  repo?: string;
  hostname: string[];
  listen?: string;
  showKey?: boolean;
}

/** `lifeboat server init|start`. */
export function serverCommand(): Command {
  const server = new Command("server").description("the control plane: create an installation, run it");

  server
    .command("init")
    .description("create a data directory: CA, certificates, database, repository, first admin API key")
    .option("--data-dir <dir>", "the data directory", DEFAULT_DATA_DIR)
    .option("--db <url>", "sqlite:FILE or postgres://... (default sqlite:D/lifeboat.db)")
    .option("--repo <location>", "repository directory or s3://bucket/prefix?endpoint=... (default D/repo)")
    .option("--hostname <name>", "a name or address agents reach this server by (repeat)", collect, [])
    .option("--listen <host:port>", "where to listen (default 0.0.0.0:443)")
    .option("--show-key", "also print the admin API key")
    .action(
      action<InitOpts>(async (ctx, o) => {
        const r = await initServer({
          dataDir: o.dataDir ?? DEFAULT_DATA_DIR,
          ...(o.db !== undefined ? { databaseUrl: o.db } : {}),
          ...(o.repo !== undefined ? { repository: o.repo } : {}),
          ...(o.hostname.length > 0 ? { hostnames: o.hostname } : {}),
          ...(o.listen !== undefined ? { listen: o.listen } : {}),
          logger: ctx.logger,
        });
        const keyFile = dataPaths(r.dataDir).adminApiKey;
        if (ctx.json) {
          printJson({
            dataDir: r.dataDir,
            created: r.created,
            adminApiKeyFile: keyFile,
            adminApiKeyId: r.adminApiKeyId,
            ...(o.showKey ? { adminApiKey: r.adminApiKey } : {}),
          });
        } else {
          printLines(r.created);
          if (o.showKey) process.stdout.write(`${r.adminApiKey}\n`);
          process.stderr.write(
            `server initialized in ${r.dataDir}. The admin API key is in ${keyFile}.\n` +
              `The repository key ${path.join(r.dataDir, "keys", "repo.key")} is the only way to read backups: keep an escrow copy.\n`,
          );
        }
      }),
    );

  server
    .command("start")
    .description("run the control plane until SIGTERM")
    .option("--data-dir <dir>", "the data directory", DEFAULT_DATA_DIR)
    .option("--config <file>", "the config file (default D/config.json)")
    .option("--listen <host:port>", "where to listen (default: the config's listen)")
    .option("--no-replicator", "do not receive agents' replication streams on this server")
    .action(
      action<{ dataDir: string; config?: string; listen?: string; replicator: boolean }>(async (ctx, o) => {
        const config = await loadConfig(o.config ?? dataPaths(o.dataDir).config);
        const running = await startServer(config, {
          logger: createLogger(ctx.debug ? "debug" : "info", "lifeboat-server"),
          ...(o.listen !== undefined ? { listen: o.listen } : {}),
          replicator: o.replicator,
        });
        await new Promise<void>((resolve) => running.app.server.once("close", () => resolve()));
      }),
    );
  return server;
}
