import { promises as fs } from "node:fs";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { z } from "zod";
import { LifeboatError, isRetryable } from "../../base/index.js";
import type { Backend, ObjectInfo } from "../backend.js";
import { missing } from "./memory.js";

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3BackendOptions {
  bucket: string;
  /** Key prefix the repository lives under; "" is the bucket's root. Slashes at either end are ignored. */
  prefix: string;
  /** An S3-compatible server (MinIO, Ceph, s3rver); unset means AWS. */
  endpoint?: string;
  /** Default "us-east-1". */
  region?: string;
  forcePathStyle?: boolean;
  credentials?: S3Credentials;
  /**
   * A credentials file (see loadS3Credentials) read on the first request when
   * `credentials` is not given. Neither given: the SDK's standard chain.
   */
  credentialsFile?: string;
  /** Keys per ListObjectsV2 page: S3's maximum, 1000, unless a test wants more pages. */
  listPageSize?: number;
}

const ACCEPTED_URL =
  "s3://BUCKET[/PREFIX][?endpoint=http://HOST:PORT&region=REGION&path-style=true&credentials-file=PATH]";

/**
 * A repository under a prefix of an S3 bucket. put() is one PutObject of the
 * whole object, which S3 makes visible all at once, so nothing is ever seen
 * half-written and an overwrite replaces the object whole.
 *
 * The SDK's own retries are off (maxAttempts 1): retrying is the job of the
 * withRetry decorator, and the two stacked would multiply (5 × 3 attempts).
 * Failures are classified here, where a 503 is told from a 403.
 */
export class S3Backend implements Backend {
  readonly properties: { atomicReplace: boolean; location: string };
  private readonly client: S3Client;
  private readonly bucket: string;
  /** "" or "some/prefix/": prepended to every name to make the key. */
  private readonly keyPrefix: string;
  private readonly pageSize: number;

  constructor(opts: S3BackendOptions) {
    this.bucket = opts.bucket;
    const prefix = opts.prefix.replace(/^\/+|\/+$/g, "");
    this.keyPrefix = prefix === "" ? "" : `${prefix}/`;
    this.pageSize = opts.listPageSize ?? 1000;
    const where = opts.endpoint === undefined ? "" : ` at ${redactUrl(opts.endpoint)}`;
    this.properties = { atomicReplace: true, location: `s3://${opts.bucket}/${this.keyPrefix}${where}` };

    const config: S3ClientConfig = {
      region: opts.region ?? "us-east-1",
      maxAttempts: 1,
      // Without timeouts a stalled connection would hang a replication forever.
      requestHandler: { connectionTimeout: 10_000, socketTimeout: 60_000 },
    };
    if (opts.endpoint !== undefined) {
      config.endpoint = opts.endpoint;
      // S3-compatible servers reject the checksum trailers the SDK sends by default.
      config.requestChecksumCalculation = "WHEN_REQUIRED";
      config.responseChecksumValidation = "WHEN_REQUIRED";
    }
    if (opts.forcePathStyle !== undefined) config.forcePathStyle = opts.forcePathStyle;
    if (opts.credentials) {
      config.credentials = opts.credentials;
    } else if (opts.credentialsFile !== undefined) {
      const file = opts.credentialsFile;
      let loaded: S3Credentials | undefined;
      config.credentials = async () => (loaded ??= await loadS3Credentials(file));
    }
    this.client = new S3Client(config);
  }

  private key(name: string): string {
    // The same names LocalBackend accepts, so a repository moves between backends.
    if (name === "" || name.includes("..") || name.startsWith("/") || name.includes("\\")) {
      throw new LifeboatError("STORE_BAD_NAME", `refusing object name ${JSON.stringify(name)}`);
    }
    return this.keyPrefix + name;
  }

  /**
   * A conditional PutObject (If-None-Match: *), which AWS S3, MinIO and
   * recent Ceph RGW honour. s3rver ignores the condition and overwrites.
   */
  async putIfAbsent(name: string, data: Uint8Array): Promise<boolean> {
    const Key = this.key(name);
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key,
          Body: data,
          ContentLength: data.length,
          IfNoneMatch: "*",
        }),
      );
      return true;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e.name === "PreconditionFailed" || e.$metadata?.httpStatusCode === 412) return false;
      throw mapS3Error(err, `creating ${name}`, this.properties.location);
    }
  }

  async put(name: string, data: Uint8Array): Promise<void> {
    const Key = this.key(name);
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length }),
      );
    } catch (err) {
      throw mapS3Error(err, `writing ${name}`, this.properties.location);
    }
  }

  async get(name: string, range?: { offset: number; length: number }): Promise<Buffer> {
    const Key = this.key(name);
    if (range) {
      const { offset, length } = range;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new LifeboatError("STORE_BAD_RANGE", `refusing byte range ${offset}+${length} of ${name}`);
      }
      // An HTTP range cannot be empty; the object must still exist.
      if (length === 0) {
        if (!(await this.stat(name))) throw missing(name, this.properties.location);
        return Buffer.alloc(0);
      }
    }
    const Range = range ? `bytes=${range.offset}-${range.offset + range.length - 1}` : undefined;
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, Range }));
      const bytes = res.Body ? await res.Body.transformToByteArray() : new Uint8Array(0);
      if (res.ContentLength !== undefined && bytes.length !== res.ContentLength) {
        throw new LifeboatError(
          "STORE_IO",
          `short read of ${name} from ${this.properties.location}: ${bytes.length} of ${res.ContentLength} bytes`,
          { hint: "the connection was cut; a retry usually helps", retryable: true },
        );
      }
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
      return range ? this.cut(buf, res.ContentRange, range, name) : buf;
    } catch (err) {
      const { name: errName, status } = describe(err);
      if (errName === "NoSuchBucket") throw mapS3Error(err, `reading ${name}`, this.properties.location);
      if (errName === "NoSuchKey" || status === 404) throw missing(name, this.properties.location);
      // A range starting at or past the end: S3 answers 416; the contract answers no bytes.
      if (range && (errName === "InvalidRange" || status === 416)) return Buffer.alloc(0);
      throw mapS3Error(err, `reading ${name}`, this.properties.location);
    }
  }

  /**
   * HTTP lets a server ignore Range and send the whole object (200, no
   * Content-Range), and some S3-compatible servers send more than was asked
   * (s3rver ignores an end of 0): keep only the bytes asked for.
   */
  private cut(
    buf: Buffer,
    contentRange: string | undefined,
    range: { offset: number; length: number },
    name: string,
  ): Buffer {
    const m = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(contentRange ?? "");
    const start = m ? Number(m[1]) : 0;
    if (start > range.offset) {
      throw new LifeboatError(
        "STORE_IO",
        `reading ${name} from ${this.properties.location}: asked for bytes from ${range.offset}, got bytes from ${start}`,
        { hint: "the S3 server answers byte ranges wrongly; check its compatibility" },
      );
    }
    const from = range.offset - start;
    return buf.subarray(from, from + range.length);
  }

  async stat(name: string): Promise<ObjectInfo | undefined> {
    const Key = this.key(name);
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      return { name, size: res.ContentLength ?? 0, mtimeMs: res.LastModified?.getTime() ?? 0 };
    } catch (err) {
      // HEAD responses have no body: a missing bucket is also a bare 404 here.
      const { name: errName, status } = describe(err);
      if (errName === "NotFound" || errName === "NoSuchKey" || status === 404) return undefined;
      throw mapS3Error(err, `examining ${name}`, this.properties.location);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.keyPrefix + prefix,
            MaxKeys: this.pageSize,
            ContinuationToken: token,
          }),
        );
      } catch (err) {
        throw mapS3Error(err, `listing ${prefix || "/"}`, this.properties.location);
      }
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.keyPrefix)) continue;
        const name = o.Key.slice(this.keyPrefix.length);
        if (name === "") continue;
        yield { name, size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) {
        // Stopping here would pass a partial listing off as the whole one.
        throw new LifeboatError(
          "STORE_IO",
          `listing ${prefix || "/"} in ${this.properties.location}: a truncated page came without a continuation token`,
          { hint: "the S3 server does not page ListObjectsV2 correctly", retryable: true },
        );
      }
    } while (token !== undefined);
  }

  async delete(name: string): Promise<void> {
    const Key = this.key(name);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
    } catch (err) {
      // S3 answers 204 for a missing key; some compatible servers answer 404.
      const { name: errName } = describe(err);
      if (errName === "NoSuchKey" || errName === "NotFound") return;
      throw mapS3Error(err, `deleting ${name}`, this.properties.location);
    }
  }

  close(): Promise<void> {
    this.client.destroy();
    return Promise.resolve();
  }
}

/** Parses the URL and, when it names a credentials file, reads it now so a bad file fails at once. */
export async function openS3Backend(url: string): Promise<S3Backend> {
  const opts = parseS3Url(url);
  if (opts.credentialsFile !== undefined) opts.credentials = await loadS3Credentials(opts.credentialsFile);
  return new S3Backend(opts);
}

const ACCESS_DENIED = new Set([
  "AccessDenied",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "ExpiredToken",
  "InvalidToken",
  "TokenRefreshRequired",
  "AllAccessDisabled",
  "AccountProblem",
]);

const TRANSIENT_NAMES = new Set([
  "SlowDown",
  "Throttling",
  "ThrottlingException",
  "RequestThrottled",
  "RequestLimitExceeded",
  "TooManyRequestsException",
  "RequestTimeout",
  "RequestTimeoutException",
  "InternalError",
  "ServiceUnavailable",
  "TimeoutError",
]);

function describe(err: unknown): { name: string; status: number | undefined } {
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } } | null;
  const status = e?.$metadata?.httpStatusCode;
  return {
    name: typeof e?.name === "string" ? e.name : "",
    status: typeof status === "number" ? status : undefined,
  };
}

/**
 * Classifies an SDK or network failure. Messages name the bucket and object,
 * never credentials (the SDK's messages do not carry them; the cause keeps
 * the original for --debug).
 */
export function mapS3Error(err: unknown, what: string, location: string): LifeboatError {
  if (err instanceof LifeboatError) return err;
  const { name, status } = describe(err);
  const reason = `${name || "error"}${status === undefined ? "" : ` (HTTP ${status})`}: ${(err as Error).message}`;
  if (name === "NoSuchBucket") {
    return new LifeboatError("STORE_S3_NO_BUCKET", `the bucket of ${location} does not exist (${what})`, {
      hint: `create the bucket, or fix the bucket name in the URL (${ACCEPTED_URL})`,
      cause: err,
    });
  }
  if (ACCESS_DENIED.has(name) || status === 403 || name === "CredentialsProviderError") {
    return new LifeboatError("STORE_ACCESS_DENIED", `access denied ${what} in ${location}: ${reason}`, {
      hint:
        "check the credentials (credentials-file=PATH in the URL, else the AWS credential chain), " +
        "their permissions on the bucket and prefix, and this machine's clock",
      cause: err,
    });
  }
  const transient =
    (status !== undefined && (status >= 500 || status === 429)) ||
    TRANSIENT_NAMES.has(name) ||
    Boolean((err as { $retryable?: unknown } | null)?.$retryable) ||
    isRetryable(err);
  return new LifeboatError("STORE_IO", `S3 error ${what} in ${location}: ${reason}`, {
    hint: transient
      ? "the S3 service is unavailable or throttling; it is retried, check the endpoint and network if it persists"
      : "the S3 server refused the request; check the URL and the server's compatibility",
    cause: err,
    retryable: transient,
  });
}

function redactUrl(url: string): string {
  return url.replace(/\/\/[^/?#@]*@/, "//");
}

function badUrl(url: string, why: string): LifeboatError {
  return new LifeboatError("STORE_BAD_URL", `bad S3 URL ${redactUrl(url)}: ${why}`, {
    hint: `write it as ${ACCEPTED_URL}`,
    exitCode: 2,
  });
}

/**
 * Parses `s3://BUCKET/PREFIX?endpoint=URL&region=R&path-style=true&credentials-file=F`.
 * With an endpoint and no path-style, path-style is on: S3-compatible servers
 * rarely have the wildcard DNS that virtual-hosted buckets need.
 */
export function parseS3Url(url: string): S3BackendOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw badUrl(url, "not a URL");
  }
  if (u.protocol !== "s3:") throw badUrl(url, `the scheme must be s3:, not ${u.protocol}`);
  if (u.username !== "" || u.password !== "") {
    throw badUrl(url, "credentials do not go in the URL; name a credentials-file instead");
  }
  if (u.port !== "") throw badUrl(url, "a port goes in the endpoint parameter, not after the bucket");
  if (u.hash !== "") throw badUrl(url, "a #fragment is not accepted");
  const bucket = u.hostname;
  if (!/^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/i.test(bucket)) {
    throw badUrl(
      url,
      `${JSON.stringify(bucket)} is not a bucket name (3 to 63 letters, digits, '.', '-', '_')`,
    );
  }
  let prefix: string;
  try {
    prefix = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, "");
  } catch {
    throw badUrl(url, "the prefix is not valid percent-encoding");
  }
  const opts: S3BackendOptions = { bucket, prefix };
  const seen = new Set<string>();
  for (const [key, value] of u.searchParams) {
    if (seen.has(key)) throw badUrl(url, `${key} is given twice`);
    seen.add(key);
    switch (key) {
      case "endpoint": {
        let e: URL;
        try {
          e = new URL(value);
        } catch {
          throw badUrl(url, "endpoint is not a URL");
        }
        if (e.protocol !== "http:" && e.protocol !== "https:") {
          throw badUrl(url, "endpoint must be an http:// or https:// URL");
        }
        if (e.username !== "" || e.password !== "") {
          throw badUrl(url, "credentials do not go in the endpoint; name a credentials-file instead");
        }
        opts.endpoint = value;
        break;
      }
      case "region":
        if (!/^[a-z0-9-]+$/i.test(value)) throw badUrl(url, `${JSON.stringify(value)} is not a region`);
        opts.region = value;
        break;
      case "path-style":
        if (value !== "true" && value !== "false") throw badUrl(url, "path-style must be true or false");
        opts.forcePathStyle = value === "true";
        break;
      case "credentials-file":
        if (value === "") throw badUrl(url, "credentials-file is empty");
        opts.credentialsFile = value;
        break;
      default:
        throw badUrl(url, `unknown parameter ${JSON.stringify(key)}`);
    }
  }
  if (opts.endpoint !== undefined && opts.forcePathStyle === undefined) opts.forcePathStyle = true;
  return opts;
}

const CredentialsFile = z.strictObject({
  accessKeyId: z.string().min(1),
  secretAccessKey: z.string().min(1),
  sessionToken: z.string().min(1).optional(),
});

const CREDENTIALS_FORM = '{"accessKeyId": "...", "secretAccessKey": "...", "sessionToken": "..." (optional)}';

/**
 * Reads S3 credentials from a JSON file that only its owner may access (like
 * an ssh key, any group or other permission is refused). Errors never quote
 * the file's content: JSON.parse's own message would show a piece of it.
 */
export async function loadS3Credentials(file: string): Promise<S3Credentials> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, "r");
  } catch (err) {
    throw new LifeboatError(
      "STORE_CREDENTIALS_FILE",
      `cannot read the S3 credentials file ${file}: ${(err as NodeJS.ErrnoException).code ?? "error"}`,
      { hint: `check the path; the file holds ${CREDENTIALS_FORM}`, cause: err },
    );
  }
  try {
    const st = await fh.stat();
    if ((st.mode & 0o077) !== 0) {
      throw new LifeboatError(
        "STORE_CREDENTIALS_MODE",
        `the S3 credentials file ${file} is accessible by group or others (mode ${(st.mode & 0o777).toString(8)})`,
        { hint: `chmod 600 ${file}` },
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(await fh.readFile("utf8"));
    } catch {
      throw new LifeboatError("STORE_CREDENTIALS_FILE", `the S3 credentials file ${file} is not valid JSON`, {
        hint: `write it as ${CREDENTIALS_FORM}`,
      });
    }
    const parsed = CredentialsFile.safeParse(json);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`);
      throw new LifeboatError(
        "STORE_CREDENTIALS_FILE",
        `the S3 credentials file ${file} is not in the expected form: ${problems.join("; ")}`,
        { hint: `write it as ${CREDENTIALS_FORM}` },
      );
    }
    return parsed.data;
  } finally {
    await fh.close();
  }
}
