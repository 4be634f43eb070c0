import assert from "node:assert/strict";
import { it } from "node:test";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { createJob, logJobStep } from "../../src/control/jobs.js";
import { refreshRepositoryStats, verifyAndRecord } from "../../src/control/repository-checks.js";
import { reportIngest } from "../../src/control/routes/metrics.js";
import { importDisks } from "../../src/store/index.js";
import { newRepository, tempDir } from "../support/repo.js";
import { forEachDatabase } from "../support/databases.js";
import { T0, testApp } from "./helpers.js";
import { addPit, addReplicator, addServer, setReplication } from "./seed.js";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

/**
 * A strict reader of the Prometheus text format 0.0.4: every line is a HELP,
 * a TYPE or a sample; a family's TYPE comes once, before its samples, which
 * are contiguous (empty lines are ignored); sample names belong to their family (histograms: _bucket
 * with `le`, _sum, _count); label values are quoted with \\, \" and \n
 * escapes; no series appears twice; the text ends with a newline.
 */
function parsePrometheus(text: string): Map<string, Family> {
  assert.ok(text.endsWith("\n"), "the exposition ends with a newline");
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  let current: Family | undefined;
  const finished = new Set<string>();
  const familyOf = (sample: string): Family => {
    for (const f of [current, ...families.values()]) {
      if (f === undefined) continue;
      const suffixes =
        f.type === "histogram"
          ? ["_bucket", "_sum", "_count"]
          : f.type === "summary"
            ? ["", "_sum", "_count"]
            : [""];
      if (suffixes.some((s) => f.name + s === sample)) return f;
    }
    assert.fail(`sample ${sample} has no TYPE line before it`);
  };
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${i + 1}: ${line}`;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (m === null) continue; // a plain comment
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      assert.match(name, METRIC_NAME, where);
      let f = families.get(name);
      if (f === undefined) {
        assert.ok(!finished.has(name), `${where}: family ${name} is not contiguous`);
        if (current !== undefined) finished.add(current.name);
        f = { name, type: "untyped", help: "", samples: [] };
        families.set(name, f);
        current = f;
      }
      assert.equal(f, current, `${where}: family ${name} is not contiguous`);
      if (kind === "TYPE") {
        assert.ok(TYPES.has(rest), `${where}: unknown type`);
        assert.equal(f.samples.length, 0, `${where}: TYPE after samples`);
        f.type = rest;
      } else f.help = rest;
      continue;
    }
    if (line === "") continue; // the format ignores empty lines
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    assert.ok(m, `${where}: not a sample`);
    const [, name, , body, raw] = m as unknown as [
      string,
      string,
      string | undefined,
      string | undefined,
      string,
    ];
    const labels: Record<string, string> = {};
    if (body !== undefined && body !== "") {
      const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)/y;
      let at = 0;
      while (at < body.length) {
        re.lastIndex = at;
        const l = re.exec(body);
        assert.ok(l, `${where}: bad labels at ${at}`);
        assert.match(l[1]!, LABEL_NAME, where);
        assert.ok(!(l[1]! in labels), `${where}: label ${l[1]} twice`);
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
        at = re.lastIndex;
      }
    }
    // Prometheus reads values with Go's ParseFloat: Inf and NaN in any case (prom-client writes "Nan").
    const special = /^([+-]?)(inf|infinity|nan)$/i.exec(raw);
    const value = special
      ? special[2]!.toLowerCase() === "nan"
        ? NaN
        : (special[1] === "-" ? -1 : 1) * Infinity
      : /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(raw)
        ? Number(raw)
        : NaN;
    assert.ok(special || !Number.isNaN(value), `${where}: bad value`);
    const f = familyOf(name);
    assert.equal(f, current, `${where}: sample outside its family's block`);
    if (f.type === "histogram" && name.endsWith("_bucket"))
      assert.ok("le" in labels, `${where}: bucket without le`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!seen.has(key), `${where}: series twice`);
    seen.add(key);
    f.samples.push({ name, labels, value });
  }
  return families;
}

/** The value of the one sample of `name` whose labels include `labels`. */
function value(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string>,
): number | undefined {
  const hits = [...families.values()]
    .flatMap((f) => f.samples)
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(hits.length <= 1, `${name} ${JSON.stringify(labels)}: ${hits.length} samples`);
  return hits[0]?.value;
}

const HOUR = 3_600_000;

forEachDatabase("metrics", (open) => {
  void it("/metrics: the text format, the seeded state's values, request durations; 401 without a key", async () => {
    const t = await testApp(await open());
    const db = t.database;
    await addServer(db, "srv_a", "db-01", { lag: 30, backlog: 1_048_576, lastSeen: T0 - 5000 });
    await addServer(db, "srv_b", "app-01", { state: "STALLED", lag: 0, backlog: 0 });
    await addReplicator(db, "rep_1", "dr-rep-1", T0 - 10_000);
    await setReplication(db, "srv_a", { rpoMinutes: 60 });
    await setReplication(db, "srv_b", { replicatorId: "rep_1" });
    await addPit(db, "srv_a", "db-01", T0 - 3 * HOUR);
    await addPit(db, "srv_a", "db-01", T0 - 2 * HOUR);
    await addPit(db, "srv_b", "app-01", T0 - 10 * 60_000);
    const job = await createJob(db, t.clock, { type: "drill", serverIds: ["srv_a"], createdBy: "test" });
    await logJobStep(db, t.clock, job.id, { message: "done", state: "succeeded" });

    assert.equal((await t.app.inject({ url: "/metrics" })).statusCode, 401);
    const bad = await t.app.inject({
      url: "/metrics",
      headers: { authorization: "Bearer key_x.nope-nope-nope-nope" },
    });
    assert.equal(bad.statusCode, 401);

    await t.app.inject({ url: "/api/v1/jobs/nope", headers: t.auth("viewer") });
    const r = await t.app.inject({ url: "/metrics", headers: t.auth("viewer") });
    assert.equal(r.statusCode, 200, r.body);
    assert.match(String(r.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
    const m = parsePrometheus(r.body);

    const a = { server: "db-01", server_id: "srv_a", replicator: "embedded" };
    const b = { server: "app-01", server_id: "srv_b", replicator: "dr-rep-1" };
    assert.equal(value(m, "lifeboat_server_lag_seconds", a), 30);
    assert.equal(value(m, "lifeboat_server_backlog_bytes", a), 1_048_576);
    assert.equal(value(m, "lifeboat_server_lag_seconds", b), 0);
    assert.equal(value(m, "lifeboat_server_last_seen_timestamp_seconds", a), (T0 - 5000) / 1000);
    assert.equal(value(m, "lifeboat_server_last_pit_age_seconds", a), 7200);
    assert.equal(value(m, "lifeboat_server_last_pit_timestamp_seconds", a), (T0 - 2 * HOUR) / 1000);
    assert.equal(value(m, "lifeboat_server_pits", a), 2);
    assert.equal(value(m, "lifeboat_server_rpo_seconds", a), 3600);
    assert.equal(value(m, "lifeboat_server_rpo_breached", a), 1);
    assert.equal(value(m, "lifeboat_server_last_pit_age_seconds", b), 600);
    assert.equal(value(m, "lifeboat_server_rpo_seconds", b), 1800, "the built-in RPO target");
    assert.equal(value(m, "lifeboat_server_rpo_breached", b), 0);
    assert.equal(value(m, "lifeboat_server_state", { ...a, state: "CONTINUOUS" }), 1);
    assert.equal(value(m, "lifeboat_server_state", { ...a, state: "STALLED" }), 0);
    assert.equal(value(m, "lifeboat_server_state", { ...b, state: "STALLED" }), 1);
    const stateOfB = m.get("lifeboat_server_state")!.samples.filter((s) => s.labels.server_id === "srv_b");
    assert.equal(
      stateOfB.reduce((n, s) => n + s.value, 0),
      1,
      "one state at a time",
    );
    assert.equal(m.get("lifeboat_server_state")!.type, "gauge");

    const rep = { replicator: "dr-rep-1", replicator_id: "rep_1" };
    assert.equal(value(m, "lifeboat_replicator_up", rep), 1);
    assert.equal(value(m, "lifeboat_replicator_assigned_servers", rep), 1);
    assert.equal(value(m, "lifeboat_replicator_assigned_servers", { replicator: "embedded" }), 1);
    assert.equal(value(m, "lifeboat_jobs", { type: "drill", state: "succeeded" }), 1);

    const hist = m.get("lifeboat_http_request_duration_seconds")!;
    assert.equal(hist.type, "histogram");
    const byRoute = { method: "GET", route: "/api/v1/jobs/:id", status_code: "404" };
    assert.equal(value(m, "lifeboat_http_request_duration_seconds_count", byRoute), 1, "by route pattern");
    assert.equal(value(m, "lifeboat_http_request_duration_seconds_bucket", { ...byRoute, le: "+Inf" }), 1);
    assert.equal(
      value(m, "lifeboat_http_request_duration_seconds_count", { route: "/metrics", status_code: "401" }),
      2,
    );
    for (const f of m.values()) {
      if (f.name.startsWith("lifeboat_")) assert.ok(f.help.length > 0, `${f.name} has help`);
    }
    assert.ok(m.has("process_cpu_user_seconds_total"), "process metrics");
    const doc = (await t.app.inject({ url: "/api/v1/openapi.json" })).json<{
      paths: Record<string, unknown>;
    }>();
    for (const p of ["/metrics", "/api/v1/events", "/api/v1/webhooks", "/api/v1/webhooks/{id}"])
      assert.ok(doc.paths[p], `${p} is in the OpenAPI document`);

    // The next scrape reads the database again: a decommissioned server is gone, a new PIT counts.
    await db.db.updateTable("servers").set({ decommissioned_at: T0 }).where("id", "=", "srv_b").execute();
    await addPit(db, "srv_a", "db-01", T0 - 60_000);
    const m2 = parsePrometheus((await t.app.inject({ url: "/metrics", headers: t.auth("admin") })).body);
    assert.equal(value(m2, "lifeboat_server_lag_seconds", b), undefined);
    assert.equal(value(m2, "lifeboat_server_rpo_breached", a), 0);
    assert.equal(value(m2, "lifeboat_server_last_pit_age_seconds", a), 60);
    await t.app.close();
  });

  void it("/metrics: repository size and last verify as recorded, the embedded replicator's ingest", async () => {
    const t = await testApp(await open());
    const db = t.database;
    await addServer(db, "srv_a", "db-01");
    // Nothing recorded yet: no repository series rather than zeros.
    let m = parsePrometheus((await t.app.inject({ url: "/metrics", headers: t.auth("viewer") })).body);
    assert.equal(m.has("lifeboat_repository_stored_bytes"), false);
    assert.equal(m.has("lifeboat_repository_last_verify_success"), false);
    assert.equal(m.has("lifeboat_server_replicated_bytes_total"), false, "no embedded replicator");

    const repo = await newRepository({ clock: t.clock });
    const dir = await tempDir();
    try {
      const image = Buffer.alloc(4 * 65536, 1);
      image.fill(2, 65536);
      const file = path.join(dir, "disk.img");
      await writeFile(file, image);
      await importDisks(repo, { server: "db-01", disks: [file] });
      const stats = await refreshRepositoryStats(db, t.clock, repo);
      t.clock.advance(1000);
      const verify = await verifyAndRecord(db, t.clock, repo, { readData: true });
      reportIngest(t.app, { ingested: () => new Map([["db-01", 123_456]]), servers: () => ["db-01"] });

      m = parsePrometheus((await t.app.inject({ url: "/metrics", headers: t.auth("viewer") })).body);
      for (const kind of ["packs", "pages", "trash", "other"] as const) {
        assert.equal(value(m, "lifeboat_repository_stored_bytes", { kind }), stats.storedBytes[kind]);
        assert.equal(value(m, "lifeboat_repository_objects", { kind }), stats.objects[kind]);
      }
      assert.ok(stats.storedBytes.packs > 0 && stats.objects.packs > 0);
      assert.equal(value(m, "lifeboat_repository_pits", {}), 1);
      assert.equal(value(m, "lifeboat_repository_stats_timestamp_seconds", {}), T0 / 1000);
      assert.equal(value(m, "lifeboat_repository_chunks", {}), 2, "two distinct chunks");
      assert.equal(verify.referencedChunks, 2);
      assert.equal(value(m, "lifeboat_repository_last_verify_timestamp_seconds", {}), (T0 + 1000) / 1000);
      assert.equal(value(m, "lifeboat_repository_last_verify_success", {}), 1);
      assert.equal(value(m, "lifeboat_repository_last_verify_damaged_objects", {}), 0);
      assert.equal(
        value(m, "lifeboat_repository_last_data_verify_timestamp_seconds", {}),
        (T0 + 1000) / 1000,
      );
      assert.equal(m.get("lifeboat_repository_last_verify_duration_seconds")!.type, "gauge");

      const a = { server: "db-01", server_id: "srv_a", replicator: "embedded" };
      assert.equal(m.get("lifeboat_server_replicated_bytes_total")!.type, "counter");
      assert.equal(value(m, "lifeboat_server_replicated_bytes_total", a), 123_456);
      const e = { replicator: "embedded", replicator_id: "" };
      assert.equal(value(m, "lifeboat_replicator_ingest_bytes_total", e), 123_456);
      assert.equal(value(m, "lifeboat_replicator_sessions", e), 1);
    } finally {
      await repo.close();
      await t.app.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
