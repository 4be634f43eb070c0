import { readFile } from "node:fs/promises";
import path from "node:path";
import { LifeboatError, type Logger } from "../base/index.js";
import { openBackend } from "../store/index.js";
import { MANIFEST, MANIFEST_SIG, readManifest } from "./manifest.js";

export interface PublishOptions {
  /** An S3-compatible endpoint (http(s)://host:port); unset means AWS. */
  endpoint?: string;
  bucket: string;
  prefix?: string;
  region?: string;
  logger?: Logger;
}

/**
 * Puts the bundle in `dir` into an S3 bucket under `prefix`: every file of
 * the manifest, then the manifest and its signature last, so a reader that
 * finds the manifest finds the files it names. Credentials come from the SDK's
 * standard chain (environment, ~/.aws files), never from arguments. Making the
 * objects readable by source servers is the bucket's policy, not ours.
 */
export async function publishBundle(dir: string, opts: PublishOptions): Promise<string[]> {
  const manifest = await readManifest(dir);
  const q = new URLSearchParams();
  if (opts.endpoint !== undefined) {
    q.set("endpoint", opts.endpoint);
    q.set("path-style", "true");
  }
  if (opts.region !== undefined) q.set("region", opts.region);
  const prefix = (opts.prefix ?? "").replace(/^\/+|\/+$/g, "");
  const location = `s3://${opts.bucket}${prefix ? `/${prefix}` : ""}${q.size ? `?${q.toString()}` : ""}`;
  const backend = await openBackend(location, opts.logger ? { logger: opts.logger } : {});
  const names = [...manifest.files.map((f) => f.name), MANIFEST_SIG, MANIFEST];
  try {
    for (const name of names) await backend.put(name, await readFile(path.join(dir, name)));
  } catch (err) {
    throw new LifeboatError(
      "BUNDLE_PUBLISH_FAILED",
      `could not put the bundle into ${backend.properties.location}: ${(err as Error).message}`,
      {
        hint: "check the bucket, the endpoint and the credentials (AWS_* variables or ~/.aws files)",
        cause: err,
      },
    );
  } finally {
    await backend.close();
  }
  return names;
}
