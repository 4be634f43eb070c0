#!/usr/bin/env node
// Runs the compiled tests with node's test runner.
//   node scripts/run-tests.js            every test under dist/test but dist/test/integration
//   node scripts/run-tests.js --fast     leaves out test/e2e and files named *.slow.test.ts
//   node scripts/run-tests.js --file P   one file; P may name the .ts source or the compiled .js
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
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
const res = spawnSync(
  process.execPath,
  ["--enable-source-maps", "--test", "--test-concurrency=2", ...guards, ...passthrough, ...files],
  { stdio: "inherit", cwd: root },
);
process.exit(res.status ?? 1);
