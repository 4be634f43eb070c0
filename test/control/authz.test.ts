/**
 * Authorization sweep: every route of the OpenAPI document (and the few
 * hidden ones the server also answers) is called over real mutual TLS with
 * every kind of credential — none, an agent certificate, a replicator
 * certificate, a viewer / operator / admin API key and an admin's console
 * session cookie — and must refuse (401/403, never 2xx or 5xx) each kind the
 * table below does not list for it. Refused calls go first, with plausible
 * ids of things that do not exist and again with ids of things that do
 * (the agent's server, the replicator, a token, an API key): the database is
 * unchanged afterwards (bar the audit log, which records refusals on
 * purpose). Then each accepted kind is checked to get past authentication
 * (so the table cannot silently claim a refusal the route never makes): GETs
 * as they are, state-changing calls with a body that is not JSON, which
 * fails after authentication and changes nothing.
 *
 * A route the table does not classify fails the test: add it to ROUTES.
 * SQLite only: authorization does not depend on the dialect.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, it } from "node:test";
import { sql } from "kysely";
import { type Dispatcher, request } from "undici";
import { type Database, migrateToLatest, openDatabase } from "../../src/control/db/index.js";
import { startTlsServer } from "./tls-helpers.js";

let tmp = "";
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-authz-"));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

type Kind = "none" | "agent" | "replicator" | "viewer" | "operator" | "admin" | "session";
const KINDS: readonly Kind[] = ["none", "agent", "replicator", "viewer", "operator", "admin", "session"];

// Who may use a route. `session` is an admin's console cookie (with the CSRF header).
const PUBLIC: readonly Kind[] = KINDS;
const READ: readonly Kind[] = ["viewer", "operator", "admin", "session"];
const OPERATE: readonly Kind[] = ["operator", "admin", "session"];
const ADMIN: readonly Kind[] = ["admin", "session"];
const AGENT: readonly Kind[] = ["agent"];
const REPLICATOR: readonly Kind[] = ["replicator"];

/**
 * Every route, `METHOD /path` as in the OpenAPI document, and who may use it.
 * Public routes say why they need no credential.
 */
const ROUTES: Record<string, readonly Kind[]> = {
  // Probes for load balancers and orchestrators: no secrets, no state.
  "GET /healthz": PUBLIC,
  "GET /readyz": PUBLIC,
  // The API's own description, for clients and the docs.
  "GET /api/v1/openapi.json": PUBLIC,
  // The agent bundle is fetched before install, without credentials; it is signed (verified by the installer).
  "GET /downloads/agent/": PUBLIC,
  "GET /downloads/agent/{file}": PUBLIC,
  // Registration authenticates with the install token in the body (rate-limited per address).
  "POST /api/v1/register": PUBLIC,
  "POST /api/v1/replicator/register": PUBLIC,
  // The doctor checks an install token before install (the token is the credential; rate-limited).
  "POST /api/v1/tokens/check": PUBLIC,
  // Console sign-in: the API key is in the body (rate-limited, CSRF-checked).
  "POST /api/v1/session": PUBLIC,
  // Install token (as Bearer) or agent certificate; an API key is not an install token.
  "POST /api/v1/doctor/throughput": AGENT,

  "POST /api/v1/tokens": ADMIN,
  "GET /api/v1/tokens": ADMIN,
  "DELETE /api/v1/tokens/{id}": ADMIN,
  "POST /api/v1/api-keys": ADMIN,
  "GET /api/v1/api-keys": ADMIN,
  "DELETE /api/v1/api-keys/{id}": ADMIN,
  "POST /api/v1/webhooks": ADMIN,
  "GET /api/v1/webhooks": ADMIN,
  "DELETE /api/v1/webhooks/{id}": ADMIN,

  // An agent sees its own server, a replicator those assigned to it.
  "GET /api/v1/servers": [...READ, "agent", "replicator"],
  "GET /api/v1/servers/{id}": [...READ, "agent", "replicator"],
  "PATCH /api/v1/servers/{id}": OPERATE,
  "POST /api/v1/servers/{id}/decommission": ADMIN,
  "POST /api/v1/servers/{id}/purge": ADMIN,
  "GET /api/v1/servers/{id}/lag": READ,
  "POST /api/v1/servers/{id}/pits": OPERATE,
  "POST /api/v1/groups/{group}/pits": OPERATE,
  "GET /api/v1/settings/replication": READ,
  "PUT /api/v1/settings/replication": ADMIN,
  "GET /api/v1/servers/{id}/settings/replication": [...READ, "agent"],
  "PUT /api/v1/servers/{id}/settings/replication": OPERATE,
  "GET /api/v1/settings/launch": READ,
  "PUT /api/v1/settings/launch": ADMIN,
  "GET /api/v1/servers/{id}/settings/launch": [...READ, "agent"],
  "PUT /api/v1/servers/{id}/settings/launch": OPERATE,

  "GET /api/v1/agent/settings": AGENT,
  "POST /api/v1/agent/heartbeat": AGENT,
  "POST /api/v1/agent/deregister": AGENT,
  "GET /api/v1/agent/commands": AGENT,
  "POST /api/v1/agent/commands/{id}/frozen": AGENT,
  "POST /api/v1/agent/commands/{id}/complete": AGENT,
  "POST /api/v1/agent/failback/{id}/pass": AGENT,
  "POST /api/v1/agent/failback/{id}/compare": AGENT,
  "POST /api/v1/agent/failback/{id}/changes": AGENT,
  "POST /api/v1/agent/failback/{id}/problem": AGENT,

  "POST /api/v1/replicator/heartbeat": REPLICATOR,
  "GET /api/v1/replicator/config": REPLICATOR,
  "GET /api/v1/replicator/assignments": REPLICATOR,
  "POST /api/v1/replicator/epoch": REPLICATOR,
  "GET /api/v1/replicators": READ,
  "GET /api/v1/replicators/{id}": READ,
  "POST /api/v1/replicators/{id}/drain": ADMIN,
  "POST /api/v1/replicators/{id}/undrain": ADMIN,
  "POST /api/v1/replicators/{id}/decommission": ADMIN,

  // Certificates: renewal by the holder only; revocations for replicators (and operators).
  "POST /api/v1/renew": ["agent", "replicator"],
  "GET /api/v1/revocations": [...READ, "replicator"],

  "GET /api/v1/jobs": READ,
  "GET /api/v1/jobs/{id}": READ,
  "GET /api/v1/jobs/{id}/log": READ,
  "GET /api/v1/jobs/{id}/report": READ,
  "POST /api/v1/jobs/{id}/terminate": OPERATE,
  "GET /api/v1/pits": READ,
  "GET /api/v1/commands/{id}": READ,
  "GET /api/v1/group-pits/{id}": READ,
  "POST /api/v1/launches": OPERATE,
  "POST /api/v1/plans": OPERATE,
  "GET /api/v1/plans": READ,
  "GET /api/v1/plans/{id}": READ,
  "POST /api/v1/plans/{id}/run": OPERATE,
  "POST /api/v1/failbacks": OPERATE,
  "GET /api/v1/failbacks": READ,
  "GET /api/v1/failbacks/{id}": READ,
  "POST /api/v1/failbacks/{id}/cutover": OPERATE,
  "POST /api/v1/failbacks/{id}/cancel": OPERATE,
  "GET /api/v1/repository": READ,
  "POST /api/v1/repository/verify": OPERATE,

  "GET /metrics": READ,
  "GET /api/v1/events": READ,
  "GET /api/v1/session": READ,
  // Signing out is the one write a viewer may do (its own session).
  "DELETE /api/v1/session": READ,
  "GET /api/v1/console/servers": READ,
  "GET /api/v1/audit": READ,
};

/** Routes the server answers that the OpenAPI document leaves out: the console's static page and bundles. */
const HIDDEN: Record<string, readonly Kind[]> = {
  "GET /": PUBLIC,
  "GET /assets/{name}": PUBLIC,
};

/** Plausible ids of things that do not exist, by the segment before the placeholder. */
const MISSING: Record<string, string> = {
  servers: "srv_AuthzNoSuch1",
  replicators: "rep_AuthzNoSuch1",
  jobs: "job_AuthzNoSuch1",
  plans: "plan_AuthzNoSuch1",
  commands: "cmd_AuthzNoSuch1",
  "group-pits": "gpit_AuthzNoSuch1",
  failbacks: "fb_AuthzNoSuch1",
  failback: "fb_AuthzNoSuch1",
  webhooks: "whk_AuthzNoSuch1",
  tokens: "tok_AuthzNoSuch1",
  "api-keys": "key_AuthzNoSuch1",
  groups: "no-such-group",
  agent: "no-such-file.tar.gz",
  assets: "no-such-asset.js",
};

function fill(route: string, ids: Record<string, string>): string {
  const p = route.slice(route.indexOf(" ") + 1);
  return p.replace(/([^/]+)\/\{[^}]+\}/g, (_all, before: string) => {
    const id = ids[before] ?? MISSING[before];
    assert.ok(id !== undefined, `${route}: add a placeholder id for a path parameter after /${before}/`);
    return `${before}/${id}`;
  });
}

/** Bodies for refused calls: plausible enough that an unguarded route would act on them. */
function plausibleBody(route: string, ids: Record<string, string>): unknown {
  const byRoute: Record<string, unknown> = {
    "POST /api/v1/tokens": { role: "agent", uses: 1 },
    "POST /api/v1/api-keys": { name: "intruder", role: "admin" },
    "POST /api/v1/webhooks": { url: "https://127.0.0.1:9/hook" },
    "PATCH /api/v1/servers/{id}": { group: "intruders" },
    "PUT /api/v1/settings/replication": { compression: null },
    "PUT /api/v1/settings/launch": { network: null },
    "POST /api/v1/agent/heartbeat": { state: "CONTINUOUS", lagSeconds: 0, backlogBytes: 0 },
    "POST /api/v1/replicator/heartbeat": { state: "ACTIVE", capacity: { bytes: 1e12 } },
    "POST /api/v1/replicator/epoch": { serverId: ids.servers ?? MISSING.servers, headEpoch: 1 },
  };
  return byRoute[route] ?? {};
}

interface Answer {
  status: number;
  code: string | undefined;
  body: string;
}

async function call(
  dispatcher: Dispatcher,
  base: string,
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | undefined,
): Promise<Answer> {
  const r = await request(`${base}${url}`, {
    dispatcher,
    method,
    headers: {
      // Harmless with an API key or a certificate; a cookie's state-changing call needs it.
      "x-lifeboat-csrf": "1",
      accept: "application/json",
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    ...(body === undefined ? {} : { body }),
  });
  const text = await r.body.text();
  let code: string | undefined;
  try {
    code = (JSON.parse(text) as { code?: string }).code;
  } catch {
    code = undefined;
  }
  return { status: r.statusCode, code, body: text.slice(0, 300) };
}

/** Every table's rows, hashed, except what a refusal changes on purpose. */
async function snapshot(database: Database): Promise<Record<string, string>> {
  const tables = await sql<{ name: string }>`
    select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name`.execute(
    database.db,
  );
  const out: Record<string, string> = {};
  for (const { name } of tables.rows) {
    // Refusals are audited (that is the point); migrations bookkeeping is not data; the server's
    // background loops take leases and refresh the repository's stats on their own.
    if (["audit_log", "leases", "repository_checks"].includes(name) || name.startsWith("kysely_")) continue;
    const rows = await sql<Record<string, unknown>>`select * from ${sql.table(name)}`.execute(database.db);
    const kept = rows.rows
      // Authenticating a key (before its role is found too low) notes when it was used.
      .map((r) => Object.entries(r).filter(([k]) => k !== "last_used_at"))
      .map((e) => JSON.stringify(e))
      .sort();
    out[name] = createHash("sha256").update(kept.join("\n")).digest("hex");
  }
  return out;
}

/** Routes the running app answers (HEAD aside), from Fastify's route tree, as `METHOD /path/{param}`. */
function registeredRoutes(tree: string): string[] {
  const stack: string[] = [];
  const out: string[] = [];
  for (const line of tree.split("\n")) {
    const m = /^((?:│ {3}| {4})*)(?:├── |└── )(.*?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    stack.push(m[2]!);
    const full = stack.join("").replace(/:([A-Za-z]+)/g, "{$1}");
    for (const method of (m[3] ?? "").split(", ").filter((x) => x !== "" && x !== "HEAD"))
      out.push(`${method} ${full}`);
  }
  return out;
}

void it("every route refuses every credential it is not for (401/403), changing nothing; the table covers every route", async () => {
  const database = await openDatabase(`sqlite:${path.join(tmp, "authz.db")}`);
  await migrateToLatest(database);
  const t = await startTlsServer(database, path.join(tmp, "server"));
  try {
    // Every route is classified, and only routes that exist are.
    const spec = JSON.parse(
      await (await request(`${t.url}/api/v1/openapi.json`, { dispatcher: t.operator })).body.text(),
    ) as { paths: Record<string, Record<string, unknown>> };
    const documented = Object.entries(spec.paths).flatMap(([p, ms]) =>
      Object.keys(ms).map((m) => `${m.toUpperCase()} ${p}`),
    );
    const unclassified = documented.filter((r) => ROUTES[r] === undefined);
    assert.deepEqual(unclassified, [], "new routes: say in ROUTES who may use them");
    assert.deepEqual(
      Object.keys(ROUTES).filter((r) => !documented.includes(r)),
      [],
      "routes in ROUTES that the API no longer has",
    );
    const registered = registeredRoutes(t.server.app.printRoutes({ commonPrefix: false }));
    assert.ok(registered.length >= documented.length, registered.join("\n"));
    assert.deepEqual(
      registered.filter((r) => ROUTES[r] === undefined && HIDDEN[r] === undefined),
      [],
      "routes the server answers but neither the OpenAPI document nor HIDDEN lists",
    );
    const table: Record<string, readonly Kind[]> = { ...ROUTES, ...HIDDEN };

    // The credentials.
    const agent = await t.registerAgent(await t.token("agent"), "authz-app-1");
    const replicator = await t.registerReplicator(await t.token("replicator"), "authz-rep-1");
    const unusedToken = await t.adminCall<{ id: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const makeKey = async (role: string) =>
      (
        await t.adminCall<{ id: string; key: string }>("/api/v1/api-keys", {
          method: "POST",
          body: { name: `authz ${role}`, role },
        })
      ).key;
    const viewerKey = await makeKey("viewer");
    const operatorKey = await makeKey("operator");
    const signIn = await request(`${t.url}/api/v1/session`, {
      dispatcher: t.operator,
      method: "POST",
      headers: { "content-type": "application/json", "x-lifeboat-csrf": "1" },
      body: JSON.stringify({ apiKey: t.adminKey }),
    });
    await signIn.body.text();
    assert.equal(signIn.statusCode, 201);
    const setCookie = signIn.headers["set-cookie"];
    const cookie = String(Array.isArray(setCookie) ? setCookie[0] : setCookie).split(";")[0]!;

    const as: Record<Kind, { dispatcher: Dispatcher; headers: Record<string, string> }> = {
      none: { dispatcher: t.operator, headers: {} },
      agent: { dispatcher: agent.dispatcher, headers: {} },
      replicator: { dispatcher: replicator.dispatcher, headers: {} },
      viewer: { dispatcher: t.operator, headers: { authorization: `Bearer ${viewerKey}` } },
      operator: { dispatcher: t.operator, headers: { authorization: `Bearer ${operatorKey}` } },
      admin: { dispatcher: t.operator, headers: t.admin },
      session: { dispatcher: t.operator, headers: { cookie } },
    };
    // Ids of things that exist, for a second round of refused calls.
    const existing: Record<string, string> = {
      servers: agent.id,
      replicators: replicator.id,
      tokens: unusedToken.id,
      "api-keys": t.adminKey.split(".")[0]!,
    };

    // Refusals first, then a check that they changed nothing.
    const before = await snapshot(database);
    const wrong: string[] = [];
    let refusals = 0;
    for (const [route, allowed] of Object.entries(table)) {
      const method = route.slice(0, route.indexOf(" "));
      const idSets = route.includes("{") ? [{}, existing] : [{}];
      for (const kind of KINDS) {
        if (allowed.includes(kind)) continue;
        for (const ids of idSets) {
          const url = fill(route, ids);
          const body = method === "GET" ? undefined : JSON.stringify(plausibleBody(route, ids));
          const r = await call(as[kind].dispatcher, t.url, method, url, as[kind].headers, body);
          refusals++;
          if (r.status !== 401 && r.status !== 403)
            wrong.push(`${kind} → ${method} ${url}: ${r.status} ${r.code ?? ""} ${r.body}`);
        }
      }
    }
    assert.deepEqual(wrong, [], "these must refuse (401/403)");
    assert.ok(refusals > 300, `${refusals} refused calls`);
    assert.deepEqual(await snapshot(database), before, "a refused call changed the database");
    // The admin key and the agent's and replicator's certificates still work.
    assert.equal((await call(t.operator, t.url, "GET", "/api/v1/api-keys", t.admin, undefined)).status, 200);
    const own = await call(agent.dispatcher, t.url, "GET", `/api/v1/servers/${agent.id}`, {}, undefined);
    assert.equal(own.status, 200, own.body);
    const assigned = await call(
      replicator.dispatcher,
      t.url,
      "GET",
      "/api/v1/replicator/assignments",
      {},
      undefined,
    );
    assert.equal(assigned.status, 200, assigned.body);

    // Then every accepted credential gets past authentication: never 401/403, never 5xx.
    const refusedWrongly: string[] = [];
    for (const [route, allowed] of Object.entries(table)) {
      const method = route.slice(0, route.indexOf(" "));
      let url = fill(route, {});
      if (route === "GET /api/v1/agent/commands") url += "?waitSeconds=0";
      for (const kind of allowed) {
        // Not JSON: authentication passes, then the body fails to parse, and nothing happens.
        const body = method === "GET" ? undefined : "{not json";
        const r = await call(as[kind].dispatcher, t.url, method, url, as[kind].headers, body);
        if (r.status === 401 || r.status === 403 || r.status >= 500)
          refusedWrongly.push(`${kind} → ${method} ${url}: ${r.status} ${r.code ?? ""} ${r.body}`);
      }
    }
    assert.deepEqual(refusedWrongly, [], "the table says these may use the route");
  } finally {
    await t.close();
    await database.close();
  }
});
