/**
 * The repository's backend contract against a real S3 implementation: the
 * server LIFEBOAT_TEST_S3_URL names, Ceph's RADOS Gateway under `npm run
 * test:integration` (scripts/integration/ceph-rgw.sh). Unlike s3rver, RGW
 * makes a PUT visible whole, verifies signatures and honours conditional
 * writes, so no check is excused here, and a few promises the fast suite
 * cannot test on s3rver are tested below.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import { isLifeboatError } from "../../src/base/index.js";
import type { Backend, ObjectInfo } from "../../src/store/backend.js";
import { S3Backend, openS3Backend, parseS3Url } from "../../src/store/backends/s3.js";
import { lifeboat } from "../support/cli.js";
import { externalS3Endpoint } from "../support/s3-external.js";
import { startS3Server, type TestS3Server } from "../support/s3-server.js";
import { backendContract } from "../store/backend-contract.js";

const endpoint = externalS3Endpoint();
const skip = endpoint === undefined ? "no LIFEBOAT_TEST_S3_URL: run `npm run test:integration`" : false;

if (endpoint !== undefined) {
  backendContract(`S3Backend on ${endpoint}`, async () => {
    const server = await startS3Server();
    const backend = await openS3Backend(server.url);
    return {
      backend,
      cleanup: async () => {
        await backend.close();
        await server.stop();
      },
    };
  });
}

async function names(backend: Backend, prefix = ""): Promise<string[]> {
  const out: ObjectInfo[] = [];
  for await (const o of backend.list(prefix)) out.push(o);
  return out.map((o) => o.name).sort();
}

const code = (want: string) => (err: unknown) => {
  assert.ok(isLifeboatError(err), `expected a LifeboatError, got ${String(err)}`);
  assert.equal(err.code, want, err.message);
  return true;
};

void describe("S3Backend on a real S3 server: beyond the contract", { skip }, () => {
  let server: TestS3Server;
  let backend: S3Backend;
  before(async () => {
    server = await startS3Server();
    backend = await openS3Backend(server.url);
  });
  after(async () => {
    await backend?.close();
    await server?.stop();
  });

  void it("creates with If-None-Match: * once, also when racing (the GC lock relies on it)", async () => {
    assert.equal(await backend.putIfAbsent("locks/once", Buffer.from("first")), true);
    assert.equal(await backend.putIfAbsent("locks/once", Buffer.from("second")), false);
    assert.equal((await backend.get("locks/once")).toString(), "first");
    const won = await Promise.all(
      Array.from({ length: 8 }, (_, i) => backend.putIfAbsent("locks/race", Buffer.from(`writer ${i}`))),
    );
    assert.equal(won.filter(Boolean).length, 1, `winners: ${JSON.stringify(won)}`);
    const winner = won.indexOf(true);
    assert.equal((await backend.get("locks/race")).toString(), `writer ${winner}`);
  });

  void it("lists across pages with real continuation tokens", async () => {
    const paged = new S3Backend({ ...parseS3Url(server.url), prefix: "paged", listPageSize: 3 });
    try {
      const all = Array.from({ length: 10 }, (_, i) => `p/${String(i).padStart(2, "0")}`);
      await Promise.all(all.map((n) => paged.put(n, Buffer.from(n))));
      assert.deepEqual(await names(paged, "p/"), all);
    } finally {
      await paged.close();
    }
  });

  void it("refuses a wrong secret (the signature is checked) as STORE_ACCESS_DENIED", async () => {
    const { accessKeyId } = JSON.parse(await readFile(server.credentialsFile, "utf8")) as {
      accessKeyId: string;
    };
    const wrong = new S3Backend({
      ...parseS3Url(server.url),
      credentials: { accessKeyId, secretAccessKey: "not-the-secret-at-all" },
    });
    try {
      await assert.rejects(wrong.put("x", Buffer.from("x")), code("STORE_ACCESS_DENIED"));
      await assert.rejects(wrong.get("x"), code("STORE_ACCESS_DENIED"));
    } finally {
      await wrong.close();
    }
  });

  void it("reports a missing bucket as STORE_S3_NO_BUCKET", async () => {
    const none = new S3Backend({ ...parseS3Url(server.url), bucket: "no-such-bucket-here" });
    try {
      await assert.rejects(none.put("x", Buffer.from("x")), code("STORE_S3_NO_BUCKET"));
      await assert.rejects(none.get("x"), code("STORE_S3_NO_BUCKET"));
      await assert.rejects(names(none), code("STORE_S3_NO_BUCKET"));
    } finally {
      await none.close();
    }
  });

  void it("keeps names with characters that URLs and signatures encode (heads are SERVER@EPOCH)", async () => {
    const odd = ["heads/db1@7", "n/a+b=c", "n/x:y~z", "n/with space", "n/ünïcødé", "n/semi;colon,comma"];
    for (const n of odd) await backend.put(n, Buffer.from(n));
    for (const n of odd) {
      assert.equal((await backend.get(n)).toString(), n, n);
      assert.equal((await backend.stat(n))?.size, Buffer.byteLength(n), n);
    }
    assert.deepEqual(await names(backend, "n/"), odd.filter((n) => n.startsWith("n/")).sort());
    assert.deepEqual(await names(backend, "heads/db1@"), ["heads/db1@7"]);
    for (const n of odd) await backend.delete(n);
    assert.deepEqual(await names(backend, "n/"), []);
  });

  void it("answers a ranged read of an empty object with no bytes", async () => {
    await backend.put("empty", new Uint8Array(0));
    assert.equal((await backend.get("empty", { offset: 0, length: 10 })).length, 0);
  });

  void it("passes `lifeboat store validate-backend`", { timeout: 120_000 }, async () => {
    const r = await lifeboat(["store", "validate-backend", server.url, "--json"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });
});
