#!/usr/bin/env node
// Runs the compiled tests with node's test runner.
//   node scripts/run-tests.js            every test under dist/test but dist/test/integration
//   node scripts/run-tests.js --fast     leaves out test/e2e and files named *.slow.test.ts
//   node scripts/run-tests.js --file P   one file; P may name the .ts source or the compiled .js
import { spawn } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import readline from "node:readline";
import path from "node:path";

const args = process.argv.slice(2);
const root = path.resolve(import.meta.dirname, "..");
const distTest = path.join(root, "dist", "test");

function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = path.join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".test.js") ? [p] : [];
  });
}

function compiled(p) {
  const abs = path.resolve(p);
  if (abs.endsWith(".js") && abs.startsWith(path.join(root, "dist"))) return abs;
  const rel = path.relative(root, abs).replace(/\.ts$/, ".js");
  return path.join(root, "dist", rel);
}

let files;
const fileIdx = args.indexOf("--file");
if (fileIdx >= 0) {
  files = args.slice(fileIdx + 1).map(compiled);
  for (const f of files) {
    if (!existsSync(f)) {
      console.error(`no compiled test at ${f}; give a path under test/ (e.g. test/store/codec.test.ts)`);
      process.exit(2);
    }
  }
} else {
  // test/integration needs a real object store: `npm run test:integration` runs it.
  files = walk(distTest)
    .filter((f) => !f.startsWith(path.join(distTest, "integration") + path.sep))
    .sort();
  if (args.includes("--fast")) {
    files = files.filter((f) => !f.includes(`${path.sep}e2e${path.sep}`) && !f.endsWith(".slow.test.js"));
  }
}

const passthrough = args.filter((a, i) => a.startsWith("--test-") && i !== fileIdx);
// A test file whose tests are done but that leaves a handle open (a worker, a socket) ends anyway,
// and a test without a timeout of its own fails after 10 minutes: a hang fails one file, not CI.
const guards = ["--test-force-exit", "--test-timeout=600000"].filter(
  (g) => !passthrough.some((a) => a.startsWith(g.split("=")[0])),
);
const child = spawn(
  process.execPath,
  ["--enable-source-maps", "--test", "--test-concurrency=2", ...guards, ...passthrough, ...files],
  { stdio: ["inherit", "pipe", "inherit"], cwd: root },
);
// Listened for before the output is read: "close" may come as soon as it ends.
const status = new Promise((resolve) => child.on("close", (code) => resolve(code ?? 1)));
// The TAP report passes through unchanged (CI reads its summary). Each failed test's entry is
// kept as well and repeated after the summary, so the end of a long log says which test failed
// and why without a search through hundreds of entries.
const failures = [];
let open = null;
for await (const line of readline.createInterface({ input: child.stdout, crlfDelay: Infinity })) {
  process.stdout.write(`${line}\n`);
  const notOk = /^(\s*)not ok \d+ - (.*)$/.exec(line);
  if (notOk) {
    open = { indent: notOk[1].length, lines: [line] };
    failures.push(open);
  } else if (open) {
    if (line.trim() === "..." && line.length - line.trimStart().length === open.indent + 2) open = null;
    else if (open.lines.length < 40) open.lines.push(line);
  }
}

// A suite fails because its tests did: those entries say the most.
const leaves = failures.filter((f) => !f.lines.some((l) => l.trim() === "failureType: 'subtestsFailed'"));
if (leaves.length > 0) {
  process.stdout.write(`# failing tests (${leaves.length}):\n`);
  for (const f of leaves)
    process.stdout.write(`${f.lines.map((l) => `#   ${l.trim() ? l.slice(f.indent) : l}`).join("\n")}\n`);
}
process.exit(await status);
