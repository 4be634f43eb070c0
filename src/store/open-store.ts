import path from "node:path";
import { LifeboatError, type Clock, type Logger, systemClock } from "../base/index.js";
import type { Backend } from "./backend.js";
import { LocalBackend } from "./backends/local.js";
import { withRetry } from "./backends/retry.js";
import { defaultKeyPath, readKeyFile } from "./keys.js";
import { readConfig } from "./config.js";
import { Repository } from "./repository.js";

/**
 * The one place where a repository location becomes a backend and the
 * cross-cutting decorators are stacked (today: retry with backoff for
 * transient errors). Everything that opens a repository goes through here.
 */
export async function openBackend(
  location: string,
  opts: { logger?: Logger; clock?: Clock } = {},
): Promise<Backend> {
  let raw: Backend;
  // The S3 SDK takes a fifth of a second to load: only S3 locations pay for it.
  if (location.startsWith("s3://")) raw = await (await import("./backends/s3.js")).openS3Backend(location);
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) {
    throw new LifeboatError("STORE_BAD_URL", `unsupported repository location ${location}`, {
      hint: "use a directory path or s3://bucket/prefix?endpoint=...",
      exitCode: 2,
    });
  } else raw = new LocalBackend(path.resolve(location));
  return withRetry(raw, {
    clock: opts.clock ?? systemClock,
    onRetry: (e) => opts.logger?.warn({ event: "store.retry", ...e }, "retrying a repository operation"),
  });
}

/**
 * Opens an existing repository. The key is `keyFile` when given, else the file
 * that `store init` made at ~/.config/lifeboat/keys/<repository-id>.key.
 */
export async function openRepository(
  location: string,
  opts: { keyFile?: string; logger?: Logger; clock?: Clock } = {},
): Promise<Repository> {
  const backend = await openBackend(location, opts);
  try {
    const config = await readConfig(backend);
    const keyPath = opts.keyFile ?? defaultKeyPath(config.id);
    const keyFile = await readKeyFile(keyPath);
    return await Repository.open(backend, keyFile, opts.clock ? { clock: opts.clock } : {});
  } catch (err) {
    await backend.close();
    throw err;
  }
}
