import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../base/index.js";

/**
 * Where Lifeboat's own sources are: the directory holding its package.json.
 * `bundle build` bundles the agent from the TypeScript sources (src/) with the
 * installed dependencies (node_modules/), so it runs from a checkout or an
 * npm installation that kept src/, never from the bundle itself.
 */
export function packageRoot(from = import.meta.dirname): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, "package.json");
    if (existsSync(pkg) && existsSync(path.join(dir, "src", "cli", "agent-main.ts"))) {
      const name = (JSON.parse(readFileSync(pkg, "utf8")) as { name?: string }).name;
      if (name === "lifeboat") return dir;
    }
    if (path.dirname(dir) === dir)
      throw new LifeboatError("BUNDLE_SOURCES_MISSING", "Lifeboat's sources (src/) are not installed here", {
        hint: "run `lifeboat bundle build` from a Lifeboat checkout or installation that includes src/",
      });
  }
}
