import { type Command, CommanderError } from "commander";
import { LifeboatError } from "../base/index.js";
import { reportError } from "./output.js";

/**
 * Parses `argv` with `program` and returns the exit code: 0 ok, 1 failure,
 * 2 usage. Shared by `lifeboat` and the agent bundle's entry point, so both
 * report errors alike (`error [CODE]: message` and a hint, or one JSON
 * object on stderr with --json; stack traces only with --debug).
 */
export async function runProgram(program: Command, argv: string[]): Promise<number> {
  const json = argv.includes("--json");
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

export function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}
