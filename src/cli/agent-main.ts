import { Command } from "commander";
import { LIFEBOAT_VERSION } from "../base/version.js";
import { agentCommand } from "./agent.js";
import { buildDoctorCommand } from "./doctor-command.js";
import { runProgram } from "./run-program.js";

/**
 * The entry point of the agent bundle (`lifeboat bundle build`): only what a
 * source server runs — the `agent` command group and the connectivity
 * doctor (without `--server`). Nothing of the server side is reachable from here, so
 * the bundle stays small and free of database drivers. Each command is one
 * line below; `install.sh` looks for `doctor` in `--help` before using it.
 */
export async function agentMain(argv: string[]): Promise<number> {
  // As bin/lifeboat.js: reads of the disk must not queue behind fsyncs in libuv's pool.
  process.env.UV_THREADPOOL_SIZE ??= "16";
  const program = new Command("lifeboat-agent")
    .description("Lifeboat agent: replicates this server's disks to the recovery site")
    .version(LIFEBOAT_VERSION, "-V, --version", "print the agent's version")
    .option("--json", "print one JSON document on stdout")
    .option("--debug", "show stack traces and debug logs")
    .showHelpAfterError();
  program.addCommand(agentCommand());
  program.addCommand(buildDoctorCommand());
  return runProgram(program, argv);
}
