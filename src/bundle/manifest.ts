import { createHash, sign } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { LifeboatError } from "../base/index.js";

/**
 * The bundle's manifest: plain text that install.sh reads with a POSIX shell.
 *
 *     lifeboat-agent-bundle 1
 *     version 0.1.0
 *     file <sha256 hex> <size in bytes> <name>
 *     ...
 *
 * Names are bare file names (no directories, no spaces), so a manifest can
 * never name a path outside the bundle. `manifest.sig` is the release key's
 * ECDSA P-256 signature of the manifest's bytes over SHA-256, DER-encoded:
 * what `openssl dgst -sha256 -verify pub.pem -signature manifest.sig manifest`
 * checks (OpenSSL 1.0 included).
 */
export const MANIFEST = "manifest";
export const MANIFEST_SIG = "manifest.sig";
export const MANIFEST_HEADER = "lifeboat-agent-bundle 1";
export const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export interface ManifestEntry {
  name: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  version: string;
  files: ManifestEntry[];
}

export async function hashFile(file: string): Promise<{ size: number; sha256: string }> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return { size: (await stat(file)).size, sha256: h.digest("hex") };
}

export function formatManifest(m: Manifest): string {
  const lines = [MANIFEST_HEADER, `version ${m.version}`];
  for (const f of m.files) {
    if (!FILE_NAME.test(f.name)) throw new Error(`bad bundle file name ${f.name}`);
    lines.push(`file ${f.sha256} ${f.size} ${f.name}`);
  }
  return lines.join("\n") + "\n";
}

export function parseManifest(text: string): Manifest {
  const lines = text.split("\n").filter((l) => l !== "");
  const bad = (why: string) =>
    new LifeboatError("BUNDLE_MANIFEST_INVALID", `the bundle's manifest is not valid: ${why}`, {
      hint: "rebuild the bundle with `lifeboat bundle build`",
    });
  if (lines[0] !== MANIFEST_HEADER) throw bad("unknown header");
  const version = /^version (\S+)$/.exec(lines[1] ?? "")?.[1];
  if (version === undefined) throw bad("no version line");
  const files = lines.slice(2).map((l) => {
    const m = /^file ([0-9a-f]{64}) (\d+) (\S+)$/.exec(l);
    if (!m || !FILE_NAME.test(m[3]!)) throw bad(`line ${JSON.stringify(l)}`);
    return { sha256: m[1]!, size: Number(m[2]), name: m[3]! };
  });
  return { version, files };
}

/** Writes `manifest` for `names` (files in `dir`) and its signature `manifest.sig`. */
export async function writeSignedManifest(
  dir: string,
  version: string,
  names: string[],
  signingKeyPem: string,
): Promise<Manifest> {
  const files: ManifestEntry[] = [];
  for (const name of [...names].sort()) files.push({ name, ...(await hashFile(path.join(dir, name))) });
  const manifest = { version, files };
  const text = formatManifest(manifest);
  let sig: Buffer;
  try {
    sig = sign("sha256", Buffer.from(text), signingKeyPem);
  } catch (err) {
    throw new LifeboatError(
      "BUNDLE_SIGNING_FAILED",
      `could not sign the manifest: ${(err as Error).message}`,
      {
        hint: "check the release key (D/keys/signing.key, made by `lifeboat server init`)",
        cause: err,
      },
    );
  }
  await writeFile(path.join(dir, MANIFEST), text);
  await writeFile(path.join(dir, MANIFEST_SIG), sig);
  return manifest;
}

export async function readManifest(dir: string): Promise<Manifest> {
  return parseManifest(await readFile(path.join(dir, MANIFEST), "utf8"));
}
