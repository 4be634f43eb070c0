import { copyFile } from "node:fs/promises";
import path from "node:path";
import { LifeboatError } from "../base/index.js";

/**
 * The native addons the agent loads, as shipped in the bundle: the prebuilt
 * `.node` file of each installed package, renamed to `<name>.node` (the
 * names esbuild.ts's loader asks for). Both are N-API addons, so the files
 * built for the installing Node also load in the single executable's Node 24.
 */
export const NATIVE_ADDONS = [
  { name: "zstd-napi", file: path.join("zstd-napi", "build", "Release", "binding.node") },
  { name: "direct-io", file: path.join("@ronomon", "direct-io", "binding.node") },
] as const;

export async function copyNativeAddons(root: string, outDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const a of NATIVE_ADDONS) {
    const from = path.join(root, "node_modules", a.file);
    const name = `${a.name}.node`;
    try {
      await copyFile(from, path.join(outDir, name));
    } catch (err) {
      throw new LifeboatError("BUNDLE_BUILD_FAILED", `the native addon ${from} is missing`, {
        hint: "run `npm ci` in the Lifeboat installation so the addons are built",
        cause: err,
      });
    }
    out.push(name);
  }
  return out;
}
