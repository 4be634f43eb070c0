import { Command } from "commander";
// The config module alone: the database code is loaded by the action below, and the rest of the
// control plane (its HTTP server) never, so that `--help` does not wait a second for it.
import { DEFAULT_DATA_DIR, dataPaths, loadConfig } from "../control/config.js";
import { printJson, printLines } from "./output.js";
import { action } from "./store.js";

/** `lifeboat audit verify`: walks the audit log's hash chain; exit 3 when it is broken. */
export function auditCommand(): Command {
  const audit = new Command("audit").description("the control plane's audit log");
  audit
    .command("verify")
    .description("check the audit log's hash chain")
    .option("--data-dir <dir>", "the data directory", DEFAULT_DATA_DIR)
    .option("--config <file>", "the config file (default D/config.json)")
    .action(
      action<{ dataDir: string; config?: string }>(async (ctx, o) => {
        const config = await loadConfig(o.config ?? dataPaths(o.dataDir).config);
        const [{ openDatabase }, { verifyAudit }] = await Promise.all([
          import("../control/db/index.js"),
          import("../control/audit.js"),
        ]);
        const database = await openDatabase(config.databaseUrl, { logger: ctx.logger });
        try {
          const r = await verifyAudit(database);
          if (ctx.json) printJson(r);
          else if (r.ok)
            printLines([
              `audit log ok: ${r.records} records${r.head ? `, head ${r.head.seq} ${r.head.hash}` : ""}`,
            ]);
          else printLines([`audit log BROKEN at record ${r.firstBadSeq}: ${r.reason}`]);
          return r.ok ? 0 : 3;
        } finally {
          await database.close();
        }
      }),
    );
  return audit;
}
