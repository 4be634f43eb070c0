import type { Command, Option } from "commander";

/**
 * The CLI reference (docs/cli.md) as Markdown, generated from the command
 * definitions themselves, so that it cannot say what the commands do not do.
 * `npm run docs:cli` writes it; a test fails when it is out of date.
 */
export function renderCliReference(program: Command): string {
  const out: string[] = [
    "# CLI reference",
    "",
    "Generated from the command definitions by `npm run docs:cli`; a test fails when it is out of date.",
    "Every command also takes the global options of `lifeboat` below. Exit codes: 0 success, 1 failure,",
    "2 usage error, 3 damage found by a verify. With `--json`, errors go to stderr as",
    '`{"code", "message", "hint"}` (codes: [errors.md](errors.md)).',
    "",
    "## Commands",
    "",
  ];
  const leaves = walk(program, []).filter((e) => e.path.length > 0);
  for (const e of leaves) {
    const anchor = e.path.join("-");
    out.push(`${"  ".repeat(e.path.length - 1)}- [\`${e.path.join(" ")}\`](#${anchor})`);
  }
  out.push("", "## `lifeboat`", "", program.description(), "", ...optionTable(program.options));
  for (const e of leaves) {
    const c = e.command;
    out.push("", `<a id="${e.path.join("-")}"></a>`, "");
    out.push(`${"#".repeat(Math.min(2 + e.path.length, 6))} \`lifeboat ${e.path.join(" ")}\``, "");
    if (c.description()) out.push(c.description(), "");
    out.push("```", `lifeboat ${e.path.join(" ")} ${c.usage()}`.trimEnd(), "```");
    const args = c.registeredArguments.filter((a) => a.description);
    if (args.length > 0) {
      out.push("", "| Argument | Meaning |", "| --- | --- |");
      for (const a of args)
        out.push(`| \`${a.name()}${a.variadic ? "..." : ""}\` | ${cell(a.description)} |`);
    }
    const options = c.options.filter((o) => !o.hidden);
    if (options.length > 0) out.push("", ...optionTable(options));
    if (c.commands.length > 0) {
      out.push("", "Subcommands: " + c.commands.map((s) => `\`${s.name()}\``).join(", ") + ".");
    }
  }
  return out.join("\n") + "\n";
}

function walk(c: Command, path: string[]): { path: string[]; command: Command }[] {
  return [{ path, command: c }, ...c.commands.flatMap((s) => walk(s, [...path, s.name()]))];
}

function optionTable(options: readonly Option[]): string[] {
  const rows = ["| Option | Meaning | Default |", "| --- | --- | --- |"];
  for (const o of options) {
    const def = o.defaultValue === undefined ? "" : `\`${JSON.stringify(o.defaultValue)}\``;
    const choices = o.argChoices ? ` (one of ${o.argChoices.map((x) => `\`${x}\``).join(", ")})` : "";
    rows.push(
      `| \`${o.flags}\`${o.mandatory ? " (required)" : ""} | ${cell(o.description)}${choices} | ${def} |`,
    );
  }
  return rows;
}

function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}
