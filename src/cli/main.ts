import { Command } from "commander";
import { LIFEBOAT_VERSION } from "../base/version.js";
import { allCommands, runProgram } from "./run-program.js";

/**
 * The `lifeboat` command. Exit codes: 0 ok, 1 failure, 2 usage, 3 damage
 * found by verify. Errors print as `error [CODE]: message` and a hint, or as
 * one JSON object on stderr with --json; stack traces only with --debug.
 */
export async function main(argv: string[]): Promise<number> {
  return runProgram(await lifeboatProgram(commandIn(argv)), argv);
}

/**
 * Each top-level command and the module that defines it, in the order help
 * lists them. A module is loaded only when its command runs (or for help and
 * the CLI reference, which list them all): `store import` need not load the
 * control plane, the agent and the launch code, which would cost it tens of
 * MiB of memory and start-up time.
 */
const COMMANDS: [string, () => Promise<Command>][] = [
  ["store", async () => (await import("./store.js")).storeCommand()],
  ["pits", async () => (await import("./pits.js")).pitsCommand()],
  ["demo", async () => (await import("./demo.js")).demoCommand()],
  ["inspect", async () => (await import("./inspect.js")).inspectCommand()],
  ["launch", async () => (await import("./launch.js")).launchCommand()],
  ["plans", async () => (await import("./plans.js")).plansCommand()],
  ["server", async () => (await import("./server.js")).serverCommand()],
  ["token", async () => (await import("./token.js")).tokenCommand()],
  ["servers", async () => (await import("./servers.js")).serversCommand()],
  ["audit", async () => (await import("./audit.js")).auditCommand()],
  ["settings", async () => (await import("./settings.js")).settingsCommand()],
  ["replicators", async () => (await import("./replicators.js")).replicatorsCommand()],
  ["replicator", async () => (await import("./replicator.js")).replicatorCommand()],
  ["jobs", async () => (await import("./jobs.js")).jobsCommand()],
  ["agent", async () => (await import("./agent.js")).agentCommand()],
  ["webhooks", async () => (await import("./webhooks.js")).webhooksCommand()],
  ["failback", async () => (await import("./failback.js")).failbackCommand()],
  ["bundle", async () => (await import("./bundle.js")).bundleCommand()],
  ["doctor", async () => (await import("./doctor.js")).doctorCommand()],
  ["keys", async () => (await import("./keys.js")).keysCommand()],
  ["repository", async () => (await import("./repository.js")).repositoryCommand()],
];

/** The top-level command `argv` runs, when it names one (the first word after the global options). */
export function commandIn(argv: string[]): string | undefined {
  const first = argv.slice(2).find((a) => !a.startsWith("-"));
  return COMMANDS.some(([name]) => name === first) ? first : undefined;
}

/**
 * Every command and option of `lifeboat`, unparsed (the CLI reference is
 * generated from it); with `only`, that top-level command alone.
 */
export async function lifeboatProgram(only?: string): Promise<Command> {
  const program = new Command("lifeboat")
    .description("Lifeboat: disaster recovery for servers you cannot afford to lose")
    .version(LIFEBOAT_VERSION, "-V, --version", "print Lifeboat's version")
    .option("--json", "print one JSON document on stdout")
    .option("--debug", "show stack traces and debug logs")
    .showHelpAfterError();
  for (const [name, make] of COMMANDS)
    if (only === undefined || only === name) program.addCommand(await make());
  return program;
}

// The walk over every command is shared with the agent bundle's entry point.
export { allCommands };
