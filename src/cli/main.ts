import { Command } from "commander";
import { demoCommand } from "./demo.js";
import { inspectCommand } from "./inspect.js";
import { pitsCommand } from "./pits.js";
import { allCommands, runProgram } from "./run-program.js";
import { storeCommand } from "./store.js";

/**
 * The `lifeboat` command. Exit codes: 0 ok, 1 failure, 2 usage, 3 damage
 * found by verify. Errors print as `error [CODE]: message` and a hint, or as
 * one JSON object on stderr with --json; stack traces only with --debug.
 */
export async function main(argv: string[]): Promise<number> {
  return runProgram(await lifeboatProgram(), argv);
}

/** Every command and option of `lifeboat`, unparsed (the CLI reference is generated from it). */
export async function lifeboatProgram(): Promise<Command> {
  const program = new Command("lifeboat")
    .description("Lifeboat: disaster recovery for servers you cannot afford to lose")
    .option("--json", "print one JSON document on stdout")
    .option("--debug", "show stack traces and debug logs")
    .showHelpAfterError();
  program.addCommand(storeCommand());
  program.addCommand(pitsCommand());
  program.addCommand(demoCommand());
  program.addCommand(inspectCommand());
  program.addCommand((await import("./launch.js")).launchCommand());
  program.addCommand((await import("./plans.js")).plansCommand());
  program.addCommand((await import("./server.js")).serverCommand());
  program.addCommand((await import("./token.js")).tokenCommand());
  program.addCommand((await import("./servers.js")).serversCommand());
  program.addCommand((await import("./audit.js")).auditCommand());
  program.addCommand((await import("./settings.js")).settingsCommand());
  program.addCommand((await import("./replicators.js")).replicatorsCommand());
  program.addCommand((await import("./replicator.js")).replicatorCommand());
  program.addCommand((await import("./jobs.js")).jobsCommand());
  program.addCommand((await import("./agent.js")).agentCommand());
  program.addCommand((await import("./webhooks.js")).webhooksCommand());
  program.addCommand((await import("./failback.js")).failbackCommand());
  program.addCommand((await import("./bundle.js")).bundleCommand());
  program.addCommand((await import("./doctor.js")).doctorCommand());
  program.addCommand((await import("./keys.js")).keysCommand());
  program.addCommand((await import("./repository.js")).repositoryCommand());
  return program;
}

// The walk over every command is shared with the agent bundle's entry point.
export { allCommands };
