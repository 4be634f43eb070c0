import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { rebuildPitCatalog } from "../../src/control/index.js";
import { type Repository, importDisks } from "../../src/store/index.js";
import { forEachDatabase } from "../support/databases.js";
import { writeMixedImage } from "../support/images.js";
import { newRepository, tempDir } from "../support/repo.js";

let dir: string;
let repo: Repository;
before(async () => {
  dir = await tempDir();
  repo = await newRepository({ dir: path.join(dir, "repo") });
  const img = path.join(dir, "d.img");
  await writeMixedImage(img, 1 << 20, 5, 1 << 19);
  for (const server of ["db01", "app01"]) await importDisks(repo, { server, disks: [img] });
});
after(async () => {
  await repo.close();
  await fs.rm(dir, { recursive: true, force: true });
});

forEachDatabase("PIT catalog rebuild", (open) => {
  void it("two rebuilds at once (or a PIT recorded during one) leave each PIT once, and neither fails", async () => {
    const a = await open();
    const b = await open({ sameAs: a });
    for (let round = 0; round < 3; round++) {
      const results = await Promise.all([rebuildPitCatalog(a, repo), rebuildPitCatalog(b, repo)]);
      for (const r of results) assert.equal(r.pits, 2);
      const rows = await a.db.selectFrom("pits").select(["server_name"]).orderBy("server_name").execute();
      assert.deepEqual(
        rows.map((r) => r.server_name),
        ["app01", "db01"],
      );
    }
  });
});
