import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "../../src/control/config.js";
import { migrationStatus, openDatabase } from "../../src/control/db/index.js";
import { hashSecret, splitSecret } from "../../src/control/secrets.js";
import { initServer } from "../../src/control/init.js";
import { clientIdentity } from "../../src/net/index.js";
import { openRepository } from "../../src/store/index.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-init-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const mode = async (p: string) => (await stat(p)).mode & 0o777;

void describe("server init", () => {
  void it("makes the documented layout with private keys", async () => {
    const dir = path.join(tmp, "a");
    const r = await initServer({ dataDir: dir, hostnames: ["dr.example.com", "10.0.0.5"] });
    for (const f of [
      "config.json",
      "ca.pem",
      "server.pem",
      "signing.pem",
      "admin-api.key",
      "lifeboat.db",
      "repo",
      "keys",
    ])
      assert.ok(r.created.includes(path.join(dir, f)), `${f} reported`);
    assert.deepEqual((await readdir(path.join(dir, "keys"))).sort(), [
      "ca.key",
      "repo.key",
      "server.key",
      "signing.key",
    ]);
    assert.equal(await mode(path.join(dir, "keys")), 0o700);
    for (const f of ["keys/ca.key", "keys/server.key", "keys/signing.key", "keys/repo.key", "admin-api.key"])
      assert.equal(await mode(path.join(dir, f)), 0o600, f);
    const config = await loadConfig(path.join(dir, "config.json"));
    assert.equal(config.listen, "0.0.0.0:443");
    assert.equal(config.databaseUrl, `sqlite:${path.join(dir, "lifeboat.db")}`);
    assert.equal(config.repository, path.join(dir, "repo"));
    assert.deepEqual(config.hostnames, ["dr.example.com", "10.0.0.5"]);
    // the key file holds the key alone; only its hash is in the database
    const key = (await readFile(path.join(dir, "admin-api.key"), "utf8")).trim();
    assert.equal(key, r.adminApiKey);
    const parts = splitSecret(key)!;
    assert.ok(Buffer.from(parts.secret, "base64url").length >= 16);
    const database = await openDatabase(config.databaseUrl);
    try {
      const rows = await database.db.selectFrom("api_keys").selectAll().execute();
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.role, "admin");
      assert.equal(rows[0]!.key_hash, hashSecret(parts.secret));
      assert.ok(!JSON.stringify(rows).includes(parts.secret));
      assert.deepEqual((await migrationStatus(database)).pending, []);
    } finally {
      await database.close();
    }
    // the repository opens with the key outside it
    const repo = await openRepository(path.join(dir, "repo"), {
      keyFile: path.join(dir, "keys", "repo.key"),
    });
    await repo.close();
    assert.ok(
      !(await readdir(path.join(dir, "repo"), { recursive: true })).some((f) => String(f).endsWith(".key")),
    );
    // the server certificate is not a client certificate
    assert.equal(clientIdentity(await readFile(path.join(dir, "server.pem"), "utf8")), undefined);
  });

  void it("--db sqlite means the default file", async () => {
    const dir = path.join(tmp, "e");
    const r = await initServer({ dataDir: dir, databaseUrl: "sqlite" });
    assert.equal(r.databaseUrl, `sqlite:${path.join(dir, "lifeboat.db")}`);
  });

  void it("refuses to overwrite an installation (SERVER_EXISTS) and changes nothing", async () => {
    const dir = path.join(tmp, "b");
    await initServer({ dataDir: dir });
    const before = await readFile(path.join(dir, "admin-api.key"), "utf8");
    await assert.rejects(initServer({ dataDir: dir }), { code: "SERVER_EXISTS" });
    assert.equal(await readFile(path.join(dir, "admin-api.key"), "utf8"), before);
    const other = path.join(tmp, "b2");
    await mkdir(other);
    await writeFile(path.join(other, "something"), "x");
    await assert.rejects(initServer({ dataDir: other }), { code: "SERVER_EXISTS" });
  });

  void it("leaves nothing half-made when a step fails", async () => {
    const dir = path.join(tmp, "c");
    await assert.rejects(initServer({ dataDir: dir, repository: "ftp://nowhere/x" }), {
      code: "STORE_BAD_URL",
    });
    await assert.rejects(stat(dir), { code: "ENOENT" });
    const empty = path.join(tmp, "c2");
    await mkdir(empty);
    await assert.rejects(initServer({ dataDir: empty, databaseUrl: "mysql://x" }));
    assert.deepEqual(await readdir(empty), []);
  });

  void it("rejects a bad config with every problem listed", async () => {
    const dir = path.join(tmp, "d");
    await mkdir(dir);
    await writeFile(
      path.join(dir, "config.json"),
      JSON.stringify({ version: 1, listen: "nope", colour: "red" }),
    );
    await assert.rejects(loadConfig(path.join(dir, "config.json")), (err: Error & { code: string }) => {
      assert.equal(err.code, "CONFIG_INVALID");
      for (const w of ["listen", "colour", "dataDir", "databaseUrl", "hostnames"])
        assert.match(err.message, new RegExp(w));
      return true;
    });
  });
});
