import { Command, CommanderError } from "commander";
import { LifeboatError } from "../base/index.js";
import { demoCommand } from "./demo.js";
import { inspectCommand } from "./inspect.js";
import { reportError } from "./output.js";
import { pitsCommand } from "./pits.js";
import { storeCommand } from "./store.js";

/**
 * The `lifeboat` command. Exit codes: 0 ok, 1 failure, 2 usage, 3 damage
 * found by verify. Errors print as `error [CODE]: message` and a hint, or as
 * one JSON object on stderr with --json; stack traces only with --debug.
 */
export async function main(argv: string[]): Promise<number> {
  const json = argv.includes("--json");
  const program = await lifeboatProgram();
  for (const c of allCommands(program)) {
    // With --json, usage errors are printed once, as JSON, below.
    c.exitOverride()
      .allowExcessArguments(false)
      .configureOutput({ writeErr: (s) => void (json ? undefined : process.stderr.write(s)) });
  }
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === "commander.helpDisplayed" ||
        err.code === "commander.help" ||
        err.code === "commander.version"
      )
        return 0;
      if (json) {
        const message = err.message.replace(/^error: /, "");
        reportError(new LifeboatError("USAGE", message, { hint: "see --help", exitCode: 2 }), {
          json,
          debug: false,
        });
      }
      return 2;
    }
    return reportError(err, { json, debug: argv.includes("--debug") });
  }
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
  program.addCommand((await import("./doctor.js")).doctorCommand());
  return program;
}

export function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}
