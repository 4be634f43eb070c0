import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { allCommands, commandIn, lifeboatProgram } from "../../src/cli/main.js";
import { renderCliReference } from "../../src/cli/reference.js";

void describe("CLI reference", () => {
  void it("docs/cli.md is what the command definitions say (run `npm run docs:cli` after changing a command)", async () => {
    const program = await lifeboatProgram();
    const want = renderCliReference(program);
    const have = await readFile(new URL("../../../docs/cli.md", import.meta.url), "utf8");
    assert.ok(have === want, "docs/cli.md is out of date: run `npm run docs:cli` and commit it");
  });

  void it("lists every command, and every command and option has a description", async () => {
    const program = await lifeboatProgram();
    const text = renderCliReference(program);
    for (const c of allCommands(program).slice(1)) {
      assert.ok(c.description(), `command ${c.name()} has a description`);
      for (const o of c.options)
        assert.ok(o.description, `option ${o.flags} of ${c.name()} has a description`);
    }
    for (const name of ["store import", "server init", "agent install", "launch", "jobs logs"]) {
      assert.ok(text.includes(`\`lifeboat ${name}\``), `${name} is in the reference`);
    }
  });
  void it("loads only the command that runs, and every command when none is named", async () => {
    const argv = (...words: string[]) => ["node", "lifeboat", ...words];
    assert.equal(commandIn(argv("store", "import", "--repo", "r")), "store");
    assert.equal(commandIn(argv("--json", "--debug", "agent", "status")), "agent");
    assert.equal(commandIn(argv("--help")), undefined);
    assert.equal(commandIn(argv("help", "store")), undefined);
    assert.equal(commandIn(argv("no-such-command")), undefined);
    const all = (await lifeboatProgram()).commands.map((c) => c.name());
    assert.ok(all.length > 15, `${all.length} commands`);
    // Every command can be loaded alone, under the name it declares.
    for (const name of all)
      assert.deepEqual(
        (await lifeboatProgram(name)).commands.map((c) => c.name()),
        [name],
      );
  });
});
