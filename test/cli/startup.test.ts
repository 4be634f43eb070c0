import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { LIFEBOAT_VERSION } from "../../src/base/version.js";

/**
 * Packages that take a command hundreds of milliseconds to load (the HTTP
 * client and server, certificate code, database drivers), and that commands
 * working on a repository or an image never use.
 */
const HEAVY = /node_modules\/(undici|fastify|@peculiar\/[^/]+|pg|better-sqlite3|@aws-sdk\/[^/]+)\//;

/** The heavy packages loaded by importing the command module `name` (its file in src/cli) in a fresh node. */
function heavyLoadedBy(name: string): string[] {
  const url = new URL(`../../src/cli/${name}.js`, import.meta.url).href;
  const script =
    `await import(${JSON.stringify(url)});` +
    "const { createRequire } = await import('node:module');" +
    "console.log(JSON.stringify(Object.keys(createRequire(process.cwd() + '/').cache)));";
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  const loaded = JSON.parse(out) as string[];
  return [...new Set(loaded.map((f) => HEAVY.exec(f)?.[1]).filter((p): p is string => p !== undefined))];
}

void describe("CLI start-up", () => {
  // `pits list --repo`, `inspect IMAGE`, `audit verify` and every `store` command load their
  // heavy dependencies only when they use them (an API call, a database, an S3 repository).
  for (const name of ["store", "pits", "inspect", "audit"]) {
    void it(`the ${name} command loads no HTTP, certificate, database or S3 package until it needs one`, () => {
      assert.deepEqual(heavyLoadedBy(name), []);
    });
  }

  void it("the check sees a heavy package when a command does load one", () => {
    // server start needs them all: the check would catch a regression in the commands above.
    assert.ok(heavyLoadedBy("server").includes("fastify"));
  });
});

void describe("lifeboat --version", () => {
  void it("prints the package's version and exits 0", () => {
    const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as {
      version: string;
    };
    assert.equal(LIFEBOAT_VERSION, pkg.version, "src/base/version.ts must follow package.json");
    const bin = new URL("../../../bin/lifeboat.js", import.meta.url).pathname;
    for (const flag of ["--version", "-V"])
      assert.equal(execFileSync(process.execPath, [bin, flag], { encoding: "utf8" }).trim(), pkg.version);
  });
});
