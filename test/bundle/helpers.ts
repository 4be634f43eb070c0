import { spawn, spawnSync } from "node:child_process";
import { cp, readFile } from "node:fs/promises";
import path from "node:path";
import { type BuildBundleOptions, type BuiltBundle, buildBundle } from "../../src/bundle/index.js";

export interface ShRun {
  code: number | null;
  out: string;
}

/** Runs `dash install.sh ARGS` (a POSIX shell, not bash) and collects stdout and stderr together. */
export function installSh(script: string, args: string[], env: Record<string, string> = {}): Promise<ShRun> {
  return run("dash", [script, ...args], env);
}

/** Runs a program without blocking the event loop (the server under test may be in this process). */
export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<ShRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, out }));
  });
}

/** The CA's SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it (AB:CD:...). */
export function caFingerprint(caFile: string): string {
  const r = spawnSync("openssl", ["x509", "-in", caFile, "-noout", "-fingerprint", "-sha256"], {
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.trim().replace(/^[^=]*=/, "");
}

/** A copy of a bundle directory, to tamper with. */
export async function copyBundle(from: string, to: string): Promise<string> {
  await cp(from, to, { recursive: true });
  return to;
}

export async function fileText(dir: string, name: string): Promise<string> {
  return readFile(path.join(dir, name), "utf8");
}

/** Builds the signed bundle of the server whose data directory is `dataDir` into D/downloads/agent (which it serves). */
export async function buildSiteBundle(dataDir: string, sea: BuildBundleOptions["sea"]): Promise<BuiltBundle> {
  return buildBundle({
    outDir: path.join(dataDir, "downloads", "agent"),
    caPem: await readFile(path.join(dataDir, "ca.pem"), "utf8"),
    releaseCertPem: await readFile(path.join(dataDir, "signing.pem"), "utf8"),
    releaseKeyPem: await readFile(path.join(dataDir, "keys", "signing.key"), "utf8"),
    sea,
  });
}
