#!/usr/bin/env node
// Writes docs/cli.md from the command definitions (after `npm run build`).
import { writeFileSync, renameSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const { lifeboatProgram } = await import(path.join(root, "dist/src/cli/main.js"));
const { renderCliReference } = await import(path.join(root, "dist/src/cli/reference.js"));
const target = path.join(root, "docs/cli.md");
writeFileSync(`${target}.tmp`, renderCliReference(await lifeboatProgram()));
renameSync(`${target}.tmp`, target);
console.log(target);
