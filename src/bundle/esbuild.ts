import { readFile } from "node:fs/promises";
import path from "node:path";
import { build, type Plugin } from "esbuild";
import { LifeboatError } from "../base/index.js";

/** The files the JavaScript bundle is made of (names in the bundle directory). */
export const AGENT_JS = "lifeboat-agent.cjs";
export const WORKER_FILES = ["block-worker.js", "boot-inventory-worker.js"] as const;

/**
 * Prepended to every bundled file. Bundles are CommonJS (a single-executable
 * application's main script must be), so `import.meta.url` is defined from
 * `__filename`: workers (`new URL("./block-worker.js", import.meta.url)`)
 * then resolve next to the file that starts them. Inside a single
 * executable `__filename` is the executable itself, so they resolve beside it.
 * Native addons are loaded from the same directory by `__lifeboatNative`.
 */
const BANNER = [
  '"use strict";',
  'var __lifeboatMetaUrl = require("node:url").pathToFileURL(__filename).href;',
  "var __lifeboatNative = function (name) {",
  "  var m = { exports: {} };",
  '  process.dlopen(m, require("node:path").join(__dirname, name + ".node"));',
  "  return m.exports;",
  "};",
].join("\n");

/**
 * Rewrites the two ways the agent reaches a native addon so that it loads
 * the `.node` file shipped in the bundle: zstd-napi's binding.js, and
 * `require("@ronomon/direct-io")` through createRequire. Any other `.node`
 * file would not be in the bundle: the build fails rather than ship it.
 */
const nativeAddons: Plugin = {
  name: "lifeboat-native-addons",
  setup(b) {
    b.onLoad({ filter: /[\\/]zstd-napi[\\/]binding\.js$/ }, () => ({
      contents: 'module.exports = __lifeboatNative("zstd-napi");',
      loader: "js",
    }));
    b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
      const text = await readFile(args.path, "utf8");
      if (!text.includes('require("@ronomon/direct-io")')) return undefined;
      return {
        contents: text.replaceAll('require("@ronomon/direct-io")', '__lifeboatNative("direct-io")'),
        loader: "ts",
      };
    });
    b.onResolve({ filter: /\.node$|^better-sqlite3$|^pg$/ }, (args) => ({
      errors: [{ text: `${args.path} cannot go in the agent bundle (imported by ${args.importer})` }],
    }));
  },
};

/**
 * Bundles the agent (src/cli/agent-main.ts) and its worker scripts into
 * `outDir` as plain CommonJS for Node.js >= 20.
 */
export async function bundleAgentJs(root: string, outDir: string): Promise<string[]> {
  const common = {
    bundle: true,
    platform: "node" as const,
    target: "node20",
    format: "cjs" as const,
    define: { "import.meta.url": "__lifeboatMetaUrl" },
    banner: { js: BANNER },
    plugins: [nativeAddons],
    logLevel: "silent" as const,
    legalComments: "none" as const,
    tsconfig: path.join(root, "tsconfig.json"),
  };
  try {
    await build({
      ...common,
      stdin: {
        contents:
          'import { agentMain } from "./agent-main.ts";\n' +
          "void agentMain(process.argv).then((code) => { process.exitCode = code; });\n",
        resolveDir: path.join(root, "src", "cli"),
        sourcefile: "lifeboat-agent.ts",
        loader: "ts",
      },
      outfile: path.join(outDir, AGENT_JS),
    });
    await build({
      ...common,
      entryPoints: Object.fromEntries(
        WORKER_FILES.map((f) => [
          f.replace(/\.js$/, ""),
          path.join(root, "src", "agent", f.replace(/\.js$/, ".ts")),
        ]),
      ),
      outdir: outDir,
      outExtension: { ".js": ".js" },
    });
  } catch (err) {
    throw new LifeboatError(
      "BUNDLE_BUILD_FAILED",
      `esbuild could not bundle the agent: ${(err as Error).message}`,
      {
        hint: "run `npm ci` in the Lifeboat installation (esbuild and the native addons must be installed)",
        cause: err,
      },
    );
  }
  return [AGENT_JS, ...WORKER_FILES];
}
