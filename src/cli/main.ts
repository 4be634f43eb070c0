import { Command, CommanderError } from "commander";
import { demoCommand } from "./demo.js";
import { reportError } from "./output.js";
import { pitsCommand } from "./pits.js";
import { storeCommand } from "./store.js";

/**
 * The `lifeboat` command. Exit codes: 0 ok, 1 failure, 2 usage, 3 damage
 * found by verify. Errors print as `error [CODE]: message` and a hint, or as
 * one JSON object on stderr with --json; stack traces only with --debug.
 */
export async function main(argv: string[]): Promise<number> {
  const program = new Command("lifeboat")
    .description("Lifeboat: disaster recovery for servers you cannot afford to lose")
    .option("--json", "print one JSON document on stdout")
    .option("--debug", "show stack traces and debug logs")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .showHelpAfterError();
  program.addCommand(storeCommand());
  program.addCommand(pitsCommand());
  program.addCommand(demoCommand());
  for (const c of allCommands(program)) c.exitOverride().allowExcessArguments(false);
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
      return 2;
    }
    const argvJson = argv.includes("--json");
    return reportError(err, { json: argvJson, debug: argv.includes("--debug") });
  }
}

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}
