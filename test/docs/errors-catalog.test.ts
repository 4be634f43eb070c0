/**
 * Keeps docs/errors.md honest: every error code the sources can raise has a
 * row in the catalog, and every row names a code the sources still use.
 *
 * Codes are found in the text of every .ts file under src/, not by running
 * anything, in three ways (each regex is explained where it is defined):
 *  - the first argument of `new LifeboatError("CODE", ...)`, which may sit on
 *    the next line after the parenthesis;
 *  - the first argument of `damaged("CODE", ...)` (src/store/codec.ts);
 *  - any string literal shaped like a domain code ("STORE_...", "KEY_...",
 *    ...), which also catches codes that reach LifeboatError through a
 *    variable (a helper's parameter, a code copied from a worker's reply).
 * Codes outside those prefixes (USAGE; INTERNAL, which src/cli/output.ts
 * prints for any error that is not a LifeboatError) are found the first way.
 */
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";

// This file runs compiled, from dist/test/docs/, so the project root is three levels up.
const ROOT = path.resolve(import.meta.dirname, "../../..");
const SRC = path.join(ROOT, "src");
const CATALOG = path.join(ROOT, "docs", "errors.md");

/** `LifeboatError(`, optional whitespace including a newline, then a quoted upper-case code. */
const CONSTRUCTED = /LifeboatError\(\s*"([A-Z][A-Z0-9_]*)"/g;
/** The same for the damage helper: `damaged(`, optional whitespace, a quoted code. */
const DAMAGED = /damaged\(\s*"([A-Z][A-Z0-9_]*)"/g;
/** The HTTP layer's helper: `httpError(status, "CODE"` (the status may be a variable). */
const HTTP = /httpError\(\s*[\w.]+,\s*"([A-Z][A-Z0-9_]*)"/g;
/** An error body built in place: `code: "CODE"`. */
const BODY = /\bcode:\s*"([A-Z][A-Z0-9_]*)"/g;
/**
 * Any string literal made of a domain prefix, an underscore and more upper-case
 * words; digits are allowed after the prefix (STORE_S3_NO_BUCKET).
 */
const PREFIXED =
  /"((?:STORE|KEY|DISK|PIT|EXPORT|RETENTION|DEMO|DB|NET|FILE|TOKEN|AUTH|REQUEST|SERVER|CONFIG|API|WIRE|TRACE|FREEZE|AGENT|REPLICA|REPLICATOR|LAUNCH|JOB|DOCTOR)_[A-Z0-9_]+)"/g;
/** A catalog row: a line that starts with a table cell holding one code in backticks. */
const ROW = /^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|/gm;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) return sourceFiles(p);
    return p.endsWith(".ts") ? [p] : [];
  });
}

/** Every code used in src, with the files that use it (for the failure message). */
function codesInSources(): Map<string, Set<string>> {
  const found = new Map<string, Set<string>>();
  for (const file of sourceFiles(SRC)) {
    const text = readFileSync(file, "utf8");
    for (const re of [CONSTRUCTED, DAMAGED, HTTP, BODY, PREFIXED]) {
      for (const m of text.matchAll(re)) {
        const code = m[1]!;
        const files = found.get(code) ?? new Set<string>();
        files.add(path.relative(ROOT, file));
        found.set(code, files);
      }
    }
  }
  return found;
}

function codesInCatalog(): string[] {
  return [...readFileSync(CATALOG, "utf8").matchAll(ROW)].map((m) => m[1]!);
}

void describe("docs/errors.md", () => {
  const used = codesInSources();
  const documented = codesInCatalog();

  void it("the scan finds the codes it is known to need to find", () => {
    // Guards against a scan that silently matches nothing: one code of each kind of use.
    for (const code of [
      "USAGE",
      "INTERNAL",
      "STORE_OBJECT_MISSING",
      "STORE_CHUNK_MISMATCH",
      "KEY_MISMATCH",
    ]) {
      assert.ok(used.has(code), `the source scan did not find ${code}; is the regex still right?`);
    }
    assert.ok(documented.length > 0, "no rows found in docs/errors.md");
  });

  void it("documents every code used in src", () => {
    const missing = [...used.keys()].filter((c) => !documented.includes(c)).sort();
    assert.deepEqual(
      missing,
      [],
      `codes used in src but missing from docs/errors.md:\n${missing
        .map((c) => `  ${c} (${[...used.get(c)!].join(", ")})`)
        .join("\n")}\nadd a row: | \`CODE\` | meaning | how to solve |`,
    );
  });

  void it("documents no code that src no longer uses", () => {
    const stale = documented.filter((c) => !used.has(c)).sort();
    assert.deepEqual(stale, [], `codes in docs/errors.md that src no longer uses: ${stale.join(", ")}`);
  });

  void it("has one row per code", () => {
    const twice = documented.filter((c, i) => documented.indexOf(c) !== i);
    assert.deepEqual(twice, [], `codes with more than one row in docs/errors.md: ${twice.join(", ")}`);
  });
});
