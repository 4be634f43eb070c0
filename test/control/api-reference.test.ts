import assert from "node:assert/strict";
import { readFile, rename, writeFile } from "node:fs/promises";
import { it } from "node:test";
import { type OpenApiDocument, renderApiReference } from "../../src/control/api-reference.js";
import { migrateToLatest, openDatabase } from "../../src/control/db/index.js";
import { testApp } from "./helpers.js";

const DOC = new URL("../../../docs/api.md", import.meta.url);

void it("docs/api.md is what the OpenAPI document says (run `npm run docs:api` after changing a route)", async () => {
  const database = await openDatabase("sqlite::memory:");
  try {
    await migrateToLatest(database);
    const t = await testApp(database);
    const doc = (await t.app.inject({ url: "/api/v1/openapi.json" })).json<OpenApiDocument>();
    await t.app.close();
    const want = renderApiReference(doc);
    assert.ok(want.includes("### `POST /api/v1/launches`"), "the launches route is in the reference");
    if (process.env.LIFEBOAT_WRITE_DOCS === "1") {
      await writeFile(new URL("../../../docs/api.md.tmp", import.meta.url), want);
      await rename(new URL("../../../docs/api.md.tmp", import.meta.url), DOC);
    }
    const have = await readFile(DOC, "utf8");
    assert.ok(have === want, "docs/api.md is out of date: run `npm run docs:api` and commit it");
  } finally {
    await database.close();
  }
});
