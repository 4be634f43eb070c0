import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { reindexCatalog } from "../../src/cli/reindex.js";
import { LocalBackend, type Repository, importDisks } from "../../src/store/index.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

void describe("store reindex", () => {
  let dir: string;
  let repo: Repository;
  before(async () => {
    dir = await tempDir();
    repo = await newRepository({ backend: new LocalBackend(path.join(dir, "repo")) });
  });
  after(async () => {
    await repo.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  void it("rebuilds the control plane's PIT catalog from the repository alone, replacing stale rows", async () => {
    const img = path.join(dir, "d.img");
    await writeMixedImage(img, 2 << 20, 3, 1 << 20);
    const made = [];
    for (const server of ["db01", "db01", "app01"])
      made.push((await importDisks(repo, { server, disks: [img] })).pit);
    const dbFile = path.join(dir, "catalog.db");
    await reindexCatalog(repo, dbFile);
    // A stale row (a PIT since forgotten) and a changed one are both replaced.
    const stale = new Database(dbFile);
    stale.prepare("update pits set seq = 99 where server_name = 'app01'").run();
    stale
      .prepare(
        "insert into pits (id, repository_id, server_name, seq, time_ms, consistency, disks_json) values ('ffffffffffffffffffffffff', ?, 'db01', 7, 0, 'none', '[]')",
      )
      .run(repo.config.id);
    stale.close();
    const r = await reindexCatalog(repo, dbFile);
    assert.deepEqual({ pits: r.pits, servers: r.servers }, { pits: 3, servers: 2 });
    const db = new Database(dbFile, { readonly: true });
    try {
      const rows = db
        .prepare(
          "select id, server_name as server, seq, consistency, disks_json from pits order by server_name, seq",
        )
        .all() as {
        id: string;
        server: string;
        seq: number;
        consistency: string;
        disks_json: string;
      }[];
      assert.deepEqual(
        rows.map((x) => [x.server, x.seq]),
        [
          ["app01", 1],
          ["db01", 1],
          ["db01", 2],
        ],
      );
      const byId = new Map(made.map((p) => [p.id, p]));
      for (const row of rows) assert.deepEqual(JSON.parse(row.disks_json), byId.get(row.id)!.disks);
    } finally {
      db.close();
    }
  });
});
