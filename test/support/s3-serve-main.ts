/**
 * s3rver as a process of its own, for tests that need an S3-compatible
 * server somewhere the test process is not (inside a network namespace:
 * `ip netns exec NS node s3-serve-main.js ...`). Serves HTTPS when given a
 * key and certificate. Prints one JSON line, {"port": N}, once listening, and
 * runs until SIGTERM.
 *
 *   node s3-serve-main.js --dir DIR --bucket B [--address A] [--port N] [--key F --cert F]
 *                         [--service-endpoint DOMAIN]
 *
 * s3rver takes a request to a host name as virtual-hosted style (the name,
 * or what comes before `.s3.DOMAIN`, is the bucket); a name `s3.DOMAIN`
 * under --service-endpoint DOMAIN is path style, as MinIO's MINIO_DOMAIN.
 *
 * The gaps of s3rver listed in s3-server.ts apply; in particular it checks no
 * credentials, so anonymous reads (what install.sh does) and writes succeed.
 */
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

type S3rverConstructor = new (options: Record<string, unknown>) => {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: { closeAllConnections(): void };
};
// s3rver is CommonJS without type declarations.
const S3rver = createRequire(import.meta.url)("s3rver") as S3rverConstructor;

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    bucket: { type: "string" },
    address: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    key: { type: "string" },
    cert: { type: "string" },
    "service-endpoint": { type: "string" },
  },
});
if (!values.dir || !values.bucket) throw new Error("--dir and --bucket are required");

const server = new S3rver({
  address: values.address,
  port: Number(values.port),
  silent: true,
  directory: values.dir,
  configureBuckets: [{ name: values.bucket, configs: [] }],
  ...(values["service-endpoint"] ? { serviceEndpoint: values["service-endpoint"] } : {}),
  ...(values.key && values.cert ? { key: readFileSync(values.key), cert: readFileSync(values.cert) } : {}),
});
const address = await server.run();
process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
process.once("SIGTERM", () => {
  server.httpServer?.closeAllConnections();
  void server.close().then(() => process.exit(0));
});
