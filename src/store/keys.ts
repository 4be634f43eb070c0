import { createHmac, hkdfSync, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { LifeboatError } from "../base/index.js";

/**
 * The repository key file: a small JSON document, mode 0600, that lives
 * outside the repository. It holds a random 256-bit master key from which two
 * keys are derived (HKDF-SHA256, salted with the repository id):
 *  - the encryption key (AES-256-GCM for every stored object), and
 *  - the naming key (HMAC-SHA256 of a chunk id gives its object name, so a
 *    listing of the backend reveals nothing about which blocks are stored).
 * Losing this file loses every PIT: `lifeboat store key export` makes a copy.
 */
export interface KeyFile {
  lifeboatKey: 1;
  repositoryId: string;
  masterKey: string; // base64, 32 bytes
}

export interface RepositoryKeys {
  repositoryId: string;
  encryptionKey: Buffer;
  namingKey: Buffer;
}

export function generateKeyFile(repositoryId: string): KeyFile {
  return { lifeboatKey: 1, repositoryId, masterKey: randomBytes(32).toString("base64") };
}

export function deriveKeys(file: KeyFile): RepositoryKeys {
  const master = Buffer.from(file.masterKey, "base64");
  const salt = Buffer.from(file.repositoryId, "utf8");
  const derive = (info: string) => Buffer.from(hkdfSync("sha256", master, salt, info, 32));
  return {
    repositoryId: file.repositoryId,
    encryptionKey: derive("lifeboat/encryption/v1"),
    namingKey: derive("lifeboat/naming/v1"),
  };
}

/** A value stored in the repository's config that proves a key matches without revealing it. */
export function keyCheck(keys: RepositoryKeys): string {
  return createHmac("sha256", keys.namingKey).update("lifeboat key check").digest("hex");
}

/** Where `store init` puts a key when not told: ~/.config/lifeboat/keys/<repository-id>.key. */
export function defaultKeyPath(repositoryId: string): string {
  return path.join(os.homedir(), ".config", "lifeboat", "keys", `${repositoryId}.key`);
}

export async function readKeyFile(file: string): Promise<KeyFile> {
  let text: string;
  try {
    const st = await fs.stat(file);
    if ((st.mode & 0o077) !== 0) {
      throw new LifeboatError("KEY_FILE_MODE", `key file ${file} is readable by other users`, {
        hint: `run: chmod 600 ${file}`,
      });
    }
    text = await fs.readFile(file, "utf8");
  } catch (err) {
    if (err instanceof LifeboatError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new LifeboatError("KEY_FILE_MISSING", `key file ${file} does not exist`, {
        hint: "give --key-file or LIFEBOAT_KEY_FILE, or restore the escrow copy with `lifeboat store key import`",
      });
    }
    throw new LifeboatError("KEY_FILE_UNREADABLE", `cannot read key file ${file}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const k = parsed as Partial<KeyFile> | undefined;
  if (
    !k ||
    k.lifeboatKey !== 1 ||
    typeof k.repositoryId !== "string" ||
    typeof k.masterKey !== "string" ||
    Buffer.from(k.masterKey, "base64").length !== 32
  ) {
    throw new LifeboatError("KEY_FILE_INVALID", `${file} is not a Lifeboat repository key file`, {
      hint: "point --key-file at the file `lifeboat store init` created (or an escrow copy of it)",
    });
  }
  return k as KeyFile;
}

/** Writes a key file (0600, parent 0700) with write-then-rename; refuses to replace an existing one. */
export async function writeKeyFile(
  file: string,
  key: KeyFile,
  opts: { overwrite?: boolean } = {},
): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!opts.overwrite) {
    const exists = await fs.stat(file).then(
      () => true,
      () => false,
    );
    if (exists) {
      throw new LifeboatError("KEY_FILE_EXISTS", `key file ${file} already exists`, {
        hint: "choose another path; an existing key is never overwritten",
      });
    }
  }
  const tmp = `${file}.${randomBytes(4).toString("hex")}.tmp`;
  const fh = await fs.open(tmp, "wx", 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(key, null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}
