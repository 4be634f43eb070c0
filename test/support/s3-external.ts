/**
 * An S3 server outside the test process, named by the environment: what
 * startS3Server() gives instead of s3rver when LIFEBOAT_TEST_S3_URL is set
 * (scripts/integration/ceph-rgw.sh sets it for Ceph's RADOS Gateway).
 *
 *   LIFEBOAT_TEST_S3_URL                 the endpoint, http(s)://HOST:PORT
 *   LIFEBOAT_TEST_S3_ACCESS_KEY_ID       a user allowed to create buckets
 *   LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY
 *   LIFEBOAT_TEST_S3_REGION              optional, default us-east-1
 *
 * Each server made here is a fresh bucket with a random name (as s3rver's
 * is), and the keys reach the repository through a 0600 credentials file in
 * a temporary directory, as an operator's would. stop() empties and removes
 * the bucket.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  ListObjectsV2Command,
  S3Client,
} from "@aws-sdk/client-s3";
import type { TestS3Server } from "./s3-server.js";

export const EXTERNAL_S3_URL_ENV = "LIFEBOAT_TEST_S3_URL";

/** The external endpoint when the environment names one. */
export function externalS3Endpoint(): string | undefined {
  const url = process.env[EXTERNAL_S3_URL_ENV];
  return url === undefined || url === "" ? undefined : url;
}

function credentialsFromEnv(): { accessKeyId: string; secretAccessKey: string } {
  const accessKeyId = process.env.LIFEBOAT_TEST_S3_ACCESS_KEY_ID ?? "";
  const secretAccessKey = process.env.LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY ?? "";
  if (accessKeyId === "" || secretAccessKey === "") {
    throw new Error(
      `${EXTERNAL_S3_URL_ENV} is set but LIFEBOAT_TEST_S3_ACCESS_KEY_ID or LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY is not`,
    );
  }
  return { accessKeyId, secretAccessKey };
}

export async function startExternalS3(
  endpoint: string,
  opts: { prefix?: string } = {},
): Promise<TestS3Server> {
  const credentials = credentialsFromEnv();
  const region = process.env.LIFEBOAT_TEST_S3_REGION || "us-east-1";
  const client = new S3Client({
    endpoint,
    region,
    forcePathStyle: true,
    credentials,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
  const bucket = `lifeboat-test-${randomBytes(6).toString("hex")}`;
  const dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-s3ext-"));
  try {
    const credentialsFile = path.join(dir, "credentials.json");
    await writeFile(credentialsFile, JSON.stringify(credentials), { mode: 0o600 });
    await chmod(credentialsFile, 0o600);
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    const prefix = opts.prefix ?? "repo";
    const query = new URLSearchParams({
      endpoint,
      "path-style": "true",
      "credentials-file": credentialsFile,
    });
    if (region !== "us-east-1") query.set("region", region);
    return {
      url: `s3://${bucket}/${prefix}?${query.toString()}`,
      endpoint,
      bucket,
      credentialsFile,
      stop: async () => {
        try {
          await emptyAndRemove(client, bucket);
        } finally {
          client.destroy();
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    client.destroy();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** One DeleteObject per key: the plainest request, which every S3-compatible server takes. */
async function emptyAndRemove(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
    const keys = (page.Contents ?? []).flatMap((o) => (o.Key === undefined ? [] : [o.Key]));
    if (keys.length === 0) break;
    for (let i = 0; i < keys.length; i += 16) {
      await Promise.all(
        keys.slice(i, i + 16).map((Key) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key }))),
      );
    }
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}
