#!/usr/bin/env node
// Builds the web console (src/console) into dist/console: one JavaScript and
// one CSS bundle named by content hash under assets/, and index.html that
// loads them. esbuild rather than Vite: it is one dependency the project
// already relies on for the single executable, builds in well under a second,
// and the console needs no dev server or plugins. Type checking is tsc's job
// (src/console/tsconfig.json), run before this by `npm run build`.
import { build } from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
const src = path.join(root, "src", "console");
const out = path.join(root, "dist", "console");

rmSync(out, { recursive: true, force: true });
mkdirSync(path.join(out, "assets"), { recursive: true });
const result = await build({
  entryPoints: [path.join(src, "main.tsx")],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: path.join(out, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  logLevel: "warning",
  legalComments: "none",
});
const outputs = Object.keys(result.metafile.outputs).map((f) => path.relative(out, path.resolve(root, f)));
const js = outputs.find((f) => f.endsWith(".js"));
const css = outputs.find((f) => f.endsWith(".css"));
if (!js || !css)
  throw new Error(`console build: expected a .js and a .css output, got ${outputs.join(", ")}`);
const html = readFileSync(path.join(src, "index.html"), "utf8")
  .replace("%SCRIPT%", `/${js}`)
  .replace("%STYLE%", `/${css}`);
writeFileSync(path.join(out, "index.html"), html);
writeFileSync(path.join(out, "assets", "favicon.svg"), readFileSync(path.join(src, "favicon.svg")));
