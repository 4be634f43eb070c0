#!/usr/bin/env node
// Enforces the direction of dependencies between domains (CONVENTIONS.md).
// Each rule: a domain (or a folder inside one), what it must not import, and why;
// `allow` names the few files of a banned domain it may import, each with its reason.
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..", "src");
const RULES = [
  {
    from: "agent",
    banned: ["control", "replicator", "launch", "console", "cli", "better-sqlite3", "pg", "kysely"],
    why: "the agent ships alone to source servers",
    allow: {
      // The boot inventory of the live system reads kernels and initramfs archives and
      // judges them exactly as inspect judges a disk image; launch/inspect is kept light
      // for that (the rule below). The rest of launch (targets, cloud SDKs) stays out.
      "launch/inspect/index.ts": "the agent's boot inventory uses inspect's readers and verdicts",
    },
  },
  {
    from: "launch/inspect",
    banned: [
      "control",
      "replicator",
      "store",
      "agent",
      "console",
      "cli",
      "better-sqlite3",
      "pg",
      "kysely",
      "fastify",
      "undici",
      "@aws-sdk",
    ],
    why: "the agent imports launch/inspect: no servers, databases or cloud SDKs in it",
  },
  {
    from: "wire",
    banned: ["control", "replicator", "agent", "store", "cli"],
    why: "the protocol is shared by both ends",
  },
  {
    from: "store",
    banned: ["control", "replicator", "agent", "launch", "cli", "wire"],
    why: "the repository knows nothing of who writes it",
  },
  {
    from: "base",
    banned: ["store", "wire", "agent", "replicator", "control", "launch", "net", "cli"],
    why: "base is below every domain",
  },
  {
    from: "console",
    banned: ["base", "store", "wire", "agent", "replicator", "control", "launch", "net", "cli"],
    why: "the console runs in the browser and talks to the control plane only over its HTTP API",
  },
  { from: "net", banned: ["control", "replicator", "store", "cli"], why: "net is shared by the agent" },
  {
    from: "bundle",
    banned: [
      "control",
      "replicator",
      "agent",
      "launch",
      "wire",
      "console",
      "cli",
      "better-sqlite3",
      "pg",
      "kysely",
    ],
    why: "bundle builds and publishes the agent from its sources (esbuild), it never imports it; keys come from the caller",
  },
];

function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = path.join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".ts") || p.endsWith(".tsx") ? [p] : [];
  });
}

const problems = [];
let files = [];
try {
  files = walk(root);
} catch {
  process.exit(0);
}
for (const file of files) {
  const relFile = path.relative(root, file).split(path.sep).join("/");
  const domain = relFile.split("/")[0];
  const rules = RULES.filter((r) => relFile.startsWith(`${r.from}/`));
  if (rules.length === 0) continue;
  const text = readFileSync(file, "utf8");
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*["']([^"']+)["']/g)) {
    const spec = m[1];
    let target;
    if (spec.startsWith(".")) {
      target = path.relative(root, path.resolve(path.dirname(file), spec)).split(path.sep)[0];
      // Reaching into another domain's files rather than its index.ts is also refused.
      const rel = path.relative(root, path.resolve(path.dirname(file), spec));
      const relTs = rel.split(path.sep).join("/").replace(/\.js$/, ".ts");
      if (rules.some((r) => r.allow && relTs in r.allow)) continue;
      const parts = rel.split(path.sep);
      if (target !== domain && parts.length > 2 && !rel.startsWith("..")) {
        problems.push(
          `${path.relative(root, file)}: imports ${spec}; import another domain through its index.ts`,
        );
      }
    } else {
      target = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0];
    }
    for (const r of rules) {
      if (r.banned.includes(target))
        problems.push(`${path.relative(root, file)}: imports ${spec} — ${r.why}`);
    }
  }
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
