/**
 * An S3 server for tests: s3rver on 127.0.0.1, a random port, a fresh temp
 * directory and a random bucket, with a 0600 credentials file. With
 * LIFEBOAT_TEST_S3_URL set, a fresh bucket on that server instead
 * (s3-external.ts).
 *
 * Gaps of s3rver 3.7.1 seen from here (real S3 and MinIO behave otherwise):
 * - PutObject writes the object file in place, not to a temporary name:
 *   concurrent puts of one key can interleave into a torn object, and a
 *   reader during a put can see part of it. Real S3 makes a PUT visible whole.
 * - Signature V4 is not verified: any secret passes. The access key id must
 *   be "S3RVER" (anything else gets InvalidAccessKeyId, which tests use to
 *   provoke STORE_ACCESS_DENIED).
 * - ListObjectsV2 continuation tokens are DES-encrypted, which OpenSSL 3 (Node
 *   17 and later) refuses: every truncated page is a 500 InternalError.
 *   emulateDesForS3rver() below works around it.
 * - Range "bytes=N-0" ignores the end of 0 and sends everything from N
 *   (S3Backend keeps only the bytes asked for). A ranged GET of an empty
 *   object resets the connection (ECONNRESET) instead of answering 416.
 * - No conditional writes (If-None-Match), no versioning, no object lock; no
 *   eventual consistency is modelled (S3 is strongly consistent since 2020,
 *   but some compatible servers still list late).
 */
import { randomBytes } from "node:crypto";
import crypto from "node:crypto";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { externalS3Endpoint, startExternalS3 } from "./s3-external.js";

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server;
}
type S3rverConstructor = new (options: {
  address: string;
  port: number;
  silent: boolean;
  directory: string;
  configureBuckets: { name: string; configs: string[] }[];
}) => S3rverInstance;

// s3rver is CommonJS without type declarations.
const S3rver = createRequire(import.meta.url)("s3rver") as S3rverConstructor;

export interface TestS3Server {
  /** s3://bucket/prefix?endpoint=...&path-style=true&credentials-file=... */
  url: string;
  endpoint: string;
  bucket: string;
  /** The 0600 JSON credentials file the URL names. */
  credentialsFile: string;
  stop(): Promise<void>;
}

export async function startS3Server(opts: { prefix?: string } = {}): Promise<TestS3Server> {
  // LIFEBOAT_TEST_S3_URL names a real S3 server to use instead (npm run test:integration).
  const external = externalS3Endpoint();
  if (external !== undefined) return startExternalS3(external, opts);
  emulateDesForS3rver();
  const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-s3rver-"));
  const data = path.join(dir, "data");
  await mkdir(data);
  const credentialsFile = path.join(dir, "credentials.json");
  await writeFile(credentialsFile, JSON.stringify({ accessKeyId: "S3RVER", secretAccessKey: "S3RVER" }), {
    mode: 0o600,
  });
  await chmod(credentialsFile, 0o600);

  const bucket = `lifeboat-test-${randomBytes(6).toString("hex")}`;
  const server = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory: data,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  let address: AddressInfo;
  try {
    address = await server.run();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const endpoint = `http://127.0.0.1:${address.port}`;
  const prefix = opts.prefix ?? "repo";
  const query = new URLSearchParams({ endpoint, "path-style": "true", "credentials-file": credentialsFile });
  return {
    url: `s3://${bucket}/${prefix}?${query.toString()}`,
    endpoint,
    bucket,
    credentialsFile,
    stop: async () => {
      // Clients keep sockets alive; close() alone would wait for them.
      server.httpServer?.closeAllConnections();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

let desEmulated = false;

/**
 * s3rver makes ListObjectsV2 continuation tokens with single DES ("des", an
 * 8-byte key), which OpenSSL 3 no longer offers. Triple DES with the key
 * repeated three times is single DES exactly (encrypt, decrypt, encrypt with
 * one key), and OpenSSL 3 still has it, so this test-only shim substitutes
 * it. Nothing else in the process asks for "des".
 */
function emulateDesForS3rver(): void {
  if (desEmulated) return;
  desEmulated = true;
  const c = crypto as unknown as Record<"createCipheriv" | "createDecipheriv", CipherFactory>;
  for (const fn of ["createCipheriv", "createDecipheriv"] as const) {
    const original = c[fn];
    c[fn] = (algorithm, key, iv, options) =>
      algorithm === "des" && Buffer.isBuffer(key) && key.length === 8
        ? original("des-ede3-cbc", Buffer.concat([key, key, key]), iv, options)
        : original(algorithm, key, iv, options);
  }
}

type CipherFactory = (algorithm: string, key: unknown, iv: unknown, options?: unknown) => unknown;
