import { randomBytes } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { LifeboatError } from "../base/index.js";
import { signDetached, verifyDetached } from "../net/index.js";
import { AGENT_JS, bundleAgentJs } from "./esbuild.js";
import { type Manifest, writeSignedManifest } from "./manifest.js";
import { copyNativeAddons } from "./native.js";
import { buildSea, cachedNodeBinary } from "./sea.js";
import { packageRoot } from "./sources.js";

export const INSTALL_SH = "install.sh";
export const CA_PEM = "ca.pem";
export const RELEASE_PEM = "release.pem";

export interface BuildBundleOptions {
  /** The bundle directory; replaced whole once the new bundle is complete. */
  outDir: string;
  /** The CA certificate, the release certificate it issued, and the release key (PEM). */
  caPem: string;
  releaseCertPem: string;
  releaseKeyPem: string;
  /** The single executable: false leaves it out; else a Node 24 binary, or a cache to fetch it into. */
  sea: false | { nodeBinary?: string; cacheDir: string };
  /** Lifeboat's sources (default: the installation this code runs from). */
  root?: string;
}

export interface BuiltBundle {
  dir: string;
  manifest: Manifest;
  sea: boolean;
}

/**
 * Builds the signed agent bundle: the JavaScript bundle and its workers, the
 * native addons, the single executable (unless left out), install.sh, the CA
 * and release certificates, and the signed manifest of them all. It is made
 * in a directory beside `outDir` and moved into place only when complete, so
 * a server serving `outDir` never serves half a bundle.
 */
export async function buildBundle(opts: BuildBundleOptions): Promise<BuiltBundle> {
  checkReleaseKey(opts);
  const root = opts.root ?? packageRoot();
  const version = (JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as { version: string })
    .version;
  const outDir = path.resolve(opts.outDir);
  await mkdir(path.dirname(outDir), { recursive: true });
  const stage = await mkdtemp(path.join(path.dirname(outDir), `.${path.basename(outDir)}-build-`));
  try {
    await chmod(stage, 0o755);
    const names = [...(await bundleAgentJs(root, stage)), ...(await copyNativeAddons(root, stage))];
    // The workers are .js files of CommonJS: say so, whatever encloses the directory.
    await writeFile(path.join(stage, "package.json"), JSON.stringify({ type: "commonjs", version }) + "\n");
    await copyFile(path.join(root, "src", "bundle", INSTALL_SH), path.join(stage, INSTALL_SH));
    await chmod(path.join(stage, INSTALL_SH), 0o755);
    await writeFile(path.join(stage, CA_PEM), opts.caPem);
    await writeFile(path.join(stage, RELEASE_PEM), opts.releaseCertPem);
    names.push("package.json", INSTALL_SH, CA_PEM, RELEASE_PEM);
    if (opts.sea !== false) {
      const node = opts.sea.nodeBinary ?? (await cachedNodeBinary(opts.sea.cacheDir));
      names.push(await buildSea(stage, AGENT_JS, node));
    }
    const manifest = await writeSignedManifest(stage, version, names, opts.releaseKeyPem);
    await swapInto(stage, outDir);
    return { dir: outDir, manifest, sea: opts.sea !== false };
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
}

/** The release key must be the one in the release certificate, which the CA issued. */
function checkReleaseKey(opts: BuildBundleOptions): void {
  const probe = randomBytes(32);
  let ok = false;
  try {
    ok = verifyDetached(opts.releaseCertPem, opts.caPem, probe, signDetached(opts.releaseKeyPem, probe));
  } catch {
    ok = false;
  }
  if (!ok)
    throw new LifeboatError(
      "BUNDLE_SIGNING_FAILED",
      "the release key does not match a valid release certificate issued by this CA",
      {
        hint: "use the data directory made by `lifeboat server init` (D/signing.pem, D/keys/signing.key, D/ca.pem)",
      },
    );
}

async function swapInto(stage: string, outDir: string): Promise<void> {
  const old = `${stage}-old`;
  await rename(outDir, old).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "ENOENT") throw err;
  });
  await rename(stage, outDir);
  await rm(old, { recursive: true, force: true });
}
