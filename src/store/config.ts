import { randomBytes } from "node:crypto";
import { LifeboatError } from "../base/index.js";
import type { Backend } from "./backend.js";
import { CONFIG_NAME } from "./names.js";

/**
 * The repository's self-description, stored in plain JSON as `config`. It
 * holds no secret: the key check is an HMAC that tells a wrong key from a
 * right one without revealing either.
 */
export const REPOSITORY_FORMAT = 1;
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
export const MIN_CHUNK_SIZE = 16 * 1024;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;

export interface RepositoryConfig {
  lifeboatRepository: number;
  id: string;
  createdAt: string;
  chunkSize: number;
  /** Entries per block-map page. */
  pageFanout: number;
  compression: { algorithm: "zstd"; level: number };
  keyCheck: string;
}

export function newRepositoryId(): string {
  return randomBytes(8).toString("hex");
}

export function validateChunkSize(n: number): void {
  if (!Number.isInteger(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0) {
    throw new LifeboatError("STORE_BAD_CHUNK_SIZE", `chunk size ${n} is not allowed`, {
      hint: `use a power of two between ${MIN_CHUNK_SIZE} and ${MAX_CHUNK_SIZE} bytes`,
      exitCode: 2,
    });
  }
}

export async function readConfig(backend: Backend): Promise<RepositoryConfig> {
  let raw: Buffer;
  try {
    raw = await backend.get(CONFIG_NAME);
  } catch (err) {
    if (err instanceof LifeboatError && err.code === "STORE_OBJECT_MISSING") {
      throw new LifeboatError(
        "STORE_NOT_A_REPOSITORY",
        `no Lifeboat repository at ${backend.properties.location}`,
        {
          hint: "check --repo, or create one with `lifeboat store init`",
        },
      );
    }
    throw err;
  }
  let cfg: Partial<RepositoryConfig>;
  try {
    cfg = JSON.parse(raw.toString("utf8")) as Partial<RepositoryConfig>;
  } catch {
    throw new LifeboatError(
      "STORE_CONFIG_CORRUPT",
      `the repository config at ${backend.properties.location} is damaged`,
      {
        hint: "restore the `config` object from a copy of the repository",
      },
    );
  }
  if (typeof cfg.lifeboatRepository !== "number") {
    throw new LifeboatError(
      "STORE_NOT_A_REPOSITORY",
      `no Lifeboat repository at ${backend.properties.location}`,
      {
        hint: "check --repo",
      },
    );
  }
  if (cfg.lifeboatRepository > REPOSITORY_FORMAT) {
    throw new LifeboatError(
      "STORE_FORMAT_TOO_NEW",
      `repository format ${cfg.lifeboatRepository} is newer than this Lifeboat supports (${REPOSITORY_FORMAT})`,
      { hint: "upgrade Lifeboat; nothing was changed" },
    );
  }
  return cfg as RepositoryConfig;
}
