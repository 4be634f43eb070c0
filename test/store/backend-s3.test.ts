import assert from "node:assert/strict";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { isLifeboatError, isRetryable } from "../../src/base/index.js";
import type { Backend, ObjectInfo } from "../../src/store/backend.js";
import {
  S3Backend,
  loadS3Credentials,
  mapS3Error,
  openS3Backend,
  parseS3Url,
} from "../../src/store/backends/s3.js";
import { startS3Server, type TestS3Server } from "../support/s3-server.js";
import { backendContract } from "./backend-contract.js";

backendContract(
  "S3Backend on s3rver",
  async () => {
    const server = await startS3Server();
    const backend = await openS3Backend(server.url);
    return {
      backend,
      cleanup: async () => {
        await backend.close();
        await server.stop();
      },
    };
  },
  {
    skip: {
      "concurrent puts of one name leave one whole value":
        "s3rver writes objects in place, so concurrent puts of one key can tear; S3 itself does not",
    },
  },
);

async function names(backend: Backend, prefix = ""): Promise<string[]> {
  const out: ObjectInfo[] = [];
  for await (const o of backend.list(prefix)) out.push(o);
  return out.map((o) => o.name).sort();
}

function rejectsWith(code: string, retryable?: boolean): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isLifeboatError(err), `expected a LifeboatError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (retryable !== undefined) assert.equal(err.retryable, retryable, err.message);
    return true;
  };
}

void describe("S3Backend on s3rver: beyond the contract", () => {
  let server: TestS3Server;
  before(async () => {
    server = await startS3Server();
  });
  after(async () => {
    await server.stop();
  });

  void it("keeps names relative to the prefix and repositories apart", async () => {
    const a = new S3Backend({ ...parseS3Url(server.url), prefix: "one/" });
    const b = new S3Backend({ ...parseS3Url(server.url), prefix: "/one/two" });
    try {
      await a.put("x", Buffer.from("a"));
      await b.put("x", Buffer.from("b"));
      assert.deepEqual(await names(b), ["x"]);
      assert.deepEqual(await names(a), ["two/x", "x"]);
      assert.equal((await b.get("x")).toString(), "b");
      assert.equal(b.properties.location, `s3://${server.bucket}/one/two/ at ${server.endpoint}`);
    } finally {
      await a.close();
      await b.close();
    }
  });

  void it("lists across pages", async () => {
    const backend = new S3Backend({ ...parseS3Url(server.url), prefix: "paged", listPageSize: 2 });
    try {
      const all = ["p/0", "p/1", "p/2", "p/3", "p/4"];
      for (const n of all) await backend.put(n, Buffer.from(n));
      assert.deepEqual(await names(backend, "p/"), all);
    } finally {
      await backend.close();
    }
  });

  void it("reads the credentials file named in the URL on first use", async () => {
    const backend = new S3Backend(parseS3Url(server.url));
    try {
      await backend.put("lazy", Buffer.from("ok"));
      assert.equal((await backend.get("lazy")).toString(), "ok");
    } finally {
      await backend.close();
    }
  });

  void it("reports unknown credentials as STORE_ACCESS_DENIED, not retryable, without the secret", async () => {
    const backend = new S3Backend({
      ...parseS3Url(server.url),
      credentials: { accessKeyId: "NOT-S3RVER", secretAccessKey: "very-secret-value" },
    });
    try {
      await assert.rejects(backend.put("x", Buffer.from("x")), (err) => {
        rejectsWith("STORE_ACCESS_DENIED", false)(err);
        assert.doesNotMatch((err as Error).message, /very-secret-value/);
        return true;
      });
      await assert.rejects(names(backend), rejectsWith("STORE_ACCESS_DENIED", false));
    } finally {
      await backend.close();
    }
  });

  void it("reports a missing bucket as STORE_S3_NO_BUCKET", async () => {
    const backend = new S3Backend({ ...parseS3Url(server.url), bucket: "no-such-bucket-here" });
    try {
      await assert.rejects(backend.put("x", Buffer.from("x")), rejectsWith("STORE_S3_NO_BUCKET", false));
      await assert.rejects(backend.get("x"), rejectsWith("STORE_S3_NO_BUCKET", false));
      await assert.rejects(names(backend), rejectsWith("STORE_S3_NO_BUCKET", false));
    } finally {
      await backend.close();
    }
  });

  void it("refuses names a local repository would refuse", async () => {
    const backend = new S3Backend(parseS3Url(server.url));
    try {
      for (const bad of ["", "/abs", "a/../b", "a\\b"]) {
        await assert.rejects(backend.put(bad, Buffer.from("x")), rejectsWith("STORE_BAD_NAME"));
      }
    } finally {
      await backend.close();
    }
  });
});

void describe("S3Backend against a server that is gone", () => {
  void it("reports a refused connection as a retryable STORE_IO", async () => {
    const server = await startS3Server();
    await server.stop();
    const backend = new S3Backend({
      ...parseS3Url(server.url),
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    });
    try {
      await assert.rejects(backend.get("x"), rejectsWith("STORE_IO", true));
      await assert.rejects(names(backend), rejectsWith("STORE_IO", true));
    } finally {
      await backend.close();
    }
  });
});

void describe("mapS3Error", () => {
  const sdkError = (name: string, status?: number, extra: object = {}): Error =>
    Object.assign(new Error(`${name} happened`), { name, $metadata: { httpStatusCode: status }, ...extra });
  const map = (err: unknown) => mapS3Error(err, "reading chunks/ab", "s3://b/p/");

  void it("makes 5xx, throttling, timeouts and network errors retryable STORE_IO", () => {
    for (const err of [
      sdkError("InternalError", 500),
      sdkError("ServiceUnavailable", 503),
      sdkError("SlowDown", 503),
      sdkError("TooManyRequestsException", 429),
      sdkError("RequestTimeout", 400),
      sdkError("TimeoutError"),
      Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
      Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }),
    ]) {
      const mapped = map(err);
      assert.equal(mapped.code, "STORE_IO", err.name);
      assert.equal(mapped.retryable, true, err.message);
      assert.equal(isRetryable(mapped), true);
      assert.equal(mapped.cause, err);
    }
  });

  void it("makes credential and permission failures STORE_ACCESS_DENIED", () => {
    for (const err of [
      sdkError("AccessDenied", 403),
      sdkError("InvalidAccessKeyId", 403),
      sdkError("SignatureDoesNotMatch", 403),
      sdkError("Forbidden", 403),
      sdkError("CredentialsProviderError"),
    ]) {
      const mapped = map(err);
      assert.equal(mapped.code, "STORE_ACCESS_DENIED", err.name);
      assert.equal(mapped.retryable, false);
    }
  });

  void it("makes a missing bucket STORE_S3_NO_BUCKET with a hint", () => {
    const mapped = map(sdkError("NoSuchBucket", 404));
    assert.equal(mapped.code, "STORE_S3_NO_BUCKET");
    assert.match(mapped.hint, /create the bucket/);
  });

  void it("makes other 4xx a permanent STORE_IO", () => {
    const mapped = map(sdkError("InvalidArgument", 400));
    assert.equal(mapped.code, "STORE_IO");
    assert.equal(mapped.retryable, false);
    assert.match(mapped.message, /reading chunks\/ab in s3:\/\/b\/p\//);
  });
});

void describe("parseS3Url", () => {
  void it("reads every parameter", () => {
    assert.deepEqual(
      parseS3Url(
        "s3://my-bucket/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1&path-style=true&credentials-file=/etc/lb/s3.json",
      ),
      {
        bucket: "my-bucket",
        prefix: "some/prefix",
        endpoint: "http://127.0.0.1:9000",
        region: "eu-west-1",
        forcePathStyle: true,
        credentialsFile: "/etc/lb/s3.json",
      },
    );
  });

  void it("takes a bare bucket, and path-style from an endpoint unless told", () => {
    assert.deepEqual(parseS3Url("s3://bucket.example"), { bucket: "bucket.example", prefix: "" });
    assert.deepEqual(parseS3Url("s3://bkt?endpoint=https://minio.lan&path-style=false"), {
      bucket: "bkt",
      prefix: "",
      endpoint: "https://minio.lan",
      forcePathStyle: false,
    });
    assert.equal(parseS3Url("s3://bkt?endpoint=https://minio.lan").forcePathStyle, true);
  });

  void it("refuses bad URLs with STORE_BAD_URL and the accepted form", () => {
    for (const bad of [
      "not a url",
      "https://bucket/prefix",
      "s3:///prefix",
      "s3://b/prefix",
      "s3://bucket:9000/prefix",
      "s3://bucket/p?endpoint=ftp://host",
      "s3://bucket/p?endpoint=nonsense",
      "s3://bucket/p?path-style=yes",
      "s3://bucket/p?region=eu-west-1&region=us-east-1",
      "s3://bucket/p?secret=x",
    ]) {
      assert.throws(
        () => parseS3Url(bad),
        (err) => {
          rejectsWith("STORE_BAD_URL")(err);
          assert.match((err as { hint: string }).hint, /s3:\/\/BUCKET/);
          return true;
        },
        bad,
      );
    }
  });

  void it("refuses credentials in the URL without repeating them", () => {
    for (const bad of [
      "s3://AKIAEXAMPLE:hunter2@bucket/p",
      "s3://bucket/p?endpoint=http://AKIA:hunter2@host",
    ]) {
      assert.throws(
        () => parseS3Url(bad),
        (err) => {
          rejectsWith("STORE_BAD_URL")(err);
          assert.doesNotMatch((err as Error).message, /hunter2/);
          return true;
        },
      );
    }
  });
});

void describe("loadS3Credentials", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-creds-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const write = async (name: string, content: string, mode: number): Promise<string> => {
    const file = path.join(dir, name);
    await writeFile(file, content);
    await chmod(file, mode);
    return file;
  };

  void it("reads a 0600 file", async () => {
    const file = await write(
      "ok.json",
      '{"accessKeyId":"AK","secretAccessKey":"SK","sessionToken":"T"}',
      0o600,
    );
    assert.deepEqual(await loadS3Credentials(file), {
      accessKeyId: "AK",
      secretAccessKey: "SK",
      sessionToken: "T",
    });
  });

  void it("refuses a file readable by group or others, with a chmod hint", async () => {
    for (const mode of [0o644, 0o640, 0o604]) {
      const file = await write(
        `open-${mode.toString(8)}.json`,
        '{"accessKeyId":"A","secretAccessKey":"S"}',
        mode,
      );
      await assert.rejects(loadS3Credentials(file), (err) => {
        rejectsWith("STORE_CREDENTIALS_MODE")(err);
        assert.equal((err as { hint: string }).hint, `chmod 600 ${file}`);
        return true;
      });
    }
  });

  void it("refuses malformed content without quoting it", async () => {
    const notJson = await write("bad.json", "secretAccessKey=s3cr3t-value", 0o600);
    const wrongShape = await write("shape.json", '{"accessKeyId":"A","secret":"s3cr3t-value"}', 0o600);
    for (const file of [notJson, wrongShape, path.join(dir, "absent.json")]) {
      await assert.rejects(loadS3Credentials(file), (err) => {
        rejectsWith("STORE_CREDENTIALS_FILE")(err);
        assert.doesNotMatch((err as Error).message, /s3cr3t-value/);
        return true;
      });
    }
  });

  void it("makes openS3Backend fail at once on a bad file", async () => {
    const file = await write("loose.json", '{"accessKeyId":"A","secretAccessKey":"S"}', 0o644);
    const url = `s3://bucket/p?endpoint=http://127.0.0.1:1&credentials-file=${encodeURIComponent(file)}`;
    await assert.rejects(openS3Backend(url), rejectsWith("STORE_CREDENTIALS_MODE"));
    // Made from the URL alone, the backend reads the file on its first request.
    const lazy = new S3Backend(parseS3Url(url));
    try {
      await assert.rejects(lazy.stat("x"), rejectsWith("STORE_CREDENTIALS_MODE"));
    } finally {
      await lazy.close();
    }
  });
});
