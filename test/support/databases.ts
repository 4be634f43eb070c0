/**
 * Runs database tests on every dialect: forEachDatabase("leases", (open) => {
 * it(...) }) registers one describe for SQLite and one for PostgreSQL, and
 * each `await open()` inside a test gives a fresh, migrated database that is
 * closed (and on PostgreSQL dropped) after the test.
 *
 * Where PostgreSQL comes from, in this order:
 * 1. LIFEBOAT_TEST_PG_URL: a server URL for a superuser (`.ci/postgres.sh`
 *    prints one). Test databases are named lbt_<pid>_<n>_<random> there. A
 *    database whose schema a test left exactly as migrated is emptied
 *    (every row deleted) and given to the next test instead of being dropped: CREATE
 *    DATABASE and migrating cost about a second on a server that fsyncs. All
 *    are dropped when the test process's tests end.
 * 2. Running as root with PostgreSQL's binaries in /usr/lib/postgresql/N/bin:
 *    a private throwaway cluster, started once per test process (initdb and
 *    pg_ctl run as the `postgres` OS user, which they require) in a temp dir
 *    (under /dev/shm when it has room),
 *    with its unix socket in that dir, a random port on 127.0.0.1, trust
 *    authentication and fsync off. It is stopped after the process's tests
 *    (a root after() hook; exit and signal handlers if that never runs);
 *    clusters left by killed test processes (SIGKILL) are removed the next
 *    time one starts.
 * 3. Otherwise the PostgreSQL describe is skipped, and the skip says why.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync, rmSync, statfsSync } from "node:fs";
import { chmod, chown, mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe } from "node:test";
import pg from "pg";
import { type Database, type Dialect, migrateToLatest, openDatabase } from "../../src/control/db/index.js";
import { strictCapabilities } from "./capabilities.js";

export interface OpenOptions {
  /** Open another Database (connection or pool) on the same storage as this one. */
  sameAs?: Database;
  /** Leave the new database empty (default: migrate to the latest schema). */
  migrate?: boolean;
}
export type OpenTestDatabase = (opts?: OpenOptions) => Promise<Database>;

let rootHookRegistered = false;

export function forEachDatabase(title: string, fn: (open: OpenTestDatabase, dialect: Dialect) => void): void {
  if (!rootHookRegistered) {
    rootHookRegistered = true;
    // At module level this hook belongs to the root test: it runs once, after every describe.
    after(stopPostgresServer);
  }
  void describe(`${title} [sqlite]`, () => dialectSuite("sqlite", fn));
  const pgState = postgresAvailability();
  // Under LIFEBOAT_TEST_STRICT=1 (CI) PostgreSQL must be there: the suite runs and fails, never skips.
  void describe(`${title} [postgres]`, pgState.ok || strictCapabilities ? {} : { skip: pgState.reason }, () =>
    dialectSuite("postgres", fn),
  );
}

function dialectSuite(dialect: Dialect, fn: (open: OpenTestDatabase, dialect: Dialect) => void): void {
  const urls = new WeakMap<Database, string>();
  let opened: Database[] = [];
  let usedPg: string[] = [];
  let sqliteDir: string | undefined;
  let counter = 0;

  before(async () => {
    if (dialect === "sqlite") sqliteDir = await mkdtemp(path.join(os.tmpdir(), "lifeboat-test-sqlite-"));
    else await postgresServer();
  });
  afterEach(async () => {
    const closing = opened;
    opened = [];
    await Promise.all(closing.map((d) => d.close()));
    const releasing = usedPg;
    usedPg = [];
    if (releasing.length > 0) {
      const server = await postgresServer();
      for (const name of releasing) await server.release(name);
    }
  });
  after(async () => {
    if (sqliteDir !== undefined) await rm(sqliteDir, { recursive: true, force: true });
  });

  const open: OpenTestDatabase = async (opts = {}) => {
    let url: string;
    let migrated = false;
    if (opts.sameAs !== undefined) {
      const same = urls.get(opts.sameAs);
      if (same === undefined) throw new Error("sameAs: not a database this suite opened");
      url = same;
    } else if (dialect === "sqlite") {
      url = `sqlite:${path.join(sqliteDir!, `db-${++counter}.db`)}`;
    } else {
      const server = await postgresServer();
      const fresh = await server.take(opts.migrate !== false);
      usedPg.push(fresh.name);
      url = fresh.url;
      migrated = fresh.migrated;
    }
    const database = await openDatabase(url);
    opened.push(database);
    urls.set(database, url);
    if (opts.migrate !== false && opts.sameAs === undefined && !migrated) await migrateToLatest(database);
    return database;
  };
  fn(open, dialect);
}

/**
 * A URL for `database` on the test PostgreSQL server (started if need be), with
 * the server's credentials: for tests of connection errors. Call it from a
 * test inside forEachDatabase's PostgreSQL describe.
 */
export async function postgresUrlFor(database: string): Promise<string> {
  return (await postgresServer()).urlFor(database);
}

/**
 * A URL that opens the same database again, with its credentials (a
 * Database's `location` has the password removed): for tests that hand the
 * database to a server or a CLI process.
 */
export async function connectionUrl(database: Database): Promise<string> {
  if (database.dialect === "sqlite") return database.location;
  return postgresUrlFor(decodeURIComponent(new URL(database.location).pathname.slice(1)));
}

export type PostgresAvailability =
  { ok: true; how: "env" | "private-cluster" } | { ok: false; reason: string };

/** Decided without starting anything, when tests are registered. */
export function postgresAvailability(): PostgresAvailability {
  if (process.env.LIFEBOAT_TEST_PG_URL) return { ok: true, how: "env" };
  const bin = postgresBinDir();
  const why =
    "PostgreSQL tests skipped: LIFEBOAT_TEST_PG_URL is not set (run `bash .ci/postgres.sh` as root and " +
    "export the LIFEBOAT_TEST_PG_URL it prints), and no private cluster can be started here: ";
  if (process.getuid?.() !== 0) return { ok: false, reason: `${why}not running as root` };
  if (bin === undefined) {
    return {
      ok: false,
      reason: `${why}no initdb/pg_ctl in /usr/lib/postgresql/*/bin (apt-get install postgresql)`,
    };
  }
  if (postgresUser() === undefined) return { ok: false, reason: `${why}no "postgres" OS user` };
  return { ok: true, how: "private-cluster" };
}

interface PgServer {
  /** A pool on the server's maintenance database, for create/drop database. */
  admin: pg.Pool;
  urlFor(database: string): string;
  /**
   * A database for one test: with `migrated`, an emptied one from an earlier
   * test if there is one (CREATE DATABASE and migrating cost ~1 s on a
   * server that fsyncs), else a new empty one.
   */
  take(migrated: boolean): Promise<{ name: string; url: string; migrated: boolean }>;
  /** After the test: kept for reuse (rows deleted) if its schema is exactly the migrated one, else dropped. */
  release(name: string): Promise<void>;
  stop(): Promise<void>;
}

let serverPromise: Promise<PgServer> | undefined;

function postgresServer(): Promise<PgServer> {
  serverPromise ??= startPostgresServer();
  return serverPromise;
}

async function stopPostgresServer(): Promise<void> {
  const p = serverPromise;
  serverPromise = undefined;
  if (p !== undefined) await (await p.catch(() => undefined))?.stop();
}

async function startPostgresServer(): Promise<PgServer> {
  const envUrl = process.env.LIFEBOAT_TEST_PG_URL;
  if (envUrl) return serverAt(envUrl, async () => {});
  const cluster = await startPrivateCluster();
  return serverAt(cluster.url, cluster.stop);
}

/**
 * Everything that makes a schema: migrations run, columns, indexes,
 * constraints, schemas. A database is reused only if this equals what a
 * fresh migration gives, so a test that changed the schema (migrated down,
 * recorded a future migration) never hands its changes to the next test.
 */
const SCHEMA_FINGERPRINT = `
  select
    (select string_agg(name, ',' order by name) from kysely_migration) as migrations,
    (select string_agg(concat_ws(':', table_name, column_name, data_type, is_nullable, column_default), ','
       order by table_name, column_name) from information_schema.columns where table_schema = 'public') as columns,
    (select string_agg(indexdef, ',' order by indexdef) from pg_indexes where schemaname = 'public') as indexes,
    (select string_agg(conrelid::regclass::text || ':' || pg_get_constraintdef(oid), ','
       order by conrelid::regclass::text, pg_get_constraintdef(oid))
       from pg_constraint where connamespace = 'public'::regnamespace) as constraints,
    (select string_agg(nspname, ',' order by nspname) from pg_namespace
       where nspname not like 'pg\\_%' and nspname <> 'information_schema') as schemas`;

function serverAt(url: string, stopServer: () => Promise<void>): PgServer {
  const admin = new pg.Pool({ connectionString: url, max: 2 });
  admin.on("error", () => {}); // an idle admin connection dropped: the next query reconnects
  const urlFor = (database: string): string => {
    const u = new URL(url);
    u.pathname = `/${database}`;
    return u.toString();
  };
  const mine = new Set<string>();
  const spare: string[] = [];
  let counter = 0;
  let golden: Promise<string> | undefined;

  const create = async (): Promise<string> => {
    const name = `lbt_${process.pid}_${++counter}_${randomBytes(4).toString("hex")}`;
    await admin.query(`create database "${name}"`);
    mine.add(name);
    return name;
  };
  const drop = async (name: string): Promise<void> => {
    await admin.query(`drop database if exists "${name}" with (force)`);
    mine.delete(name);
  };
  const withClient = async <T>(name: string, fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const client = new pg.Client({ connectionString: urlFor(name) });
    client.on("error", () => {});
    await client.connect();
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  };
  const fingerprint = (c: pg.Client): Promise<string> =>
    c.query(SCHEMA_FINGERPRINT).then((r) => JSON.stringify(r.rows[0]));
  /** The fingerprint of a freshly migrated database; that database becomes the first spare. */
  const goldenFingerprint = (): Promise<string> =>
    (golden ??= (async () => {
      const name = await create();
      const database = await openDatabase(urlFor(name));
      try {
        await migrateToLatest(database);
      } finally {
        await database.close();
      }
      const fp = await withClient(name, fingerprint);
      spare.push(name);
      return fp;
    })());

  return {
    admin,
    urlFor,
    take: async (migrated) => {
      if (migrated) {
        await goldenFingerprint();
        const name = spare.pop();
        if (name !== undefined) return { name, url: urlFor(name), migrated: true };
      }
      const name = await create();
      return { name, url: urlFor(name), migrated: false };
    },
    release: async (name) => {
      try {
        const expected = await goldenFingerprint();
        const kept = await withClient(name, async (c) => {
          await c.query("set lock_timeout = '5s'");
          if ((await fingerprint(c)) !== expected) return false;
          const tables = await c.query<{ t: string }>(
            `select quote_ident(tablename) as t from pg_tables where schemaname = 'public'
               and tablename not in ('kysely_migration', 'kysely_migration_lock')`,
          );
          // DELETE rather than TRUNCATE: on tables this small it is several times faster (no new
          // files to create and fsync). Replica mode skips foreign-key triggers, so order does not matter.
          await c.query("begin; set local session_replication_role = replica");
          for (const { t } of tables.rows) await c.query(`delete from ${t}`);
          await c.query("commit");
          return true;
        });
        if (kept) {
          spare.push(name);
          return;
        }
      } catch {
        // not migrated, or locked by a connection a test leaked: drop it instead
      }
      await drop(name);
    },
    stop: async () => {
      for (const name of [...mine]) await drop(name).catch(() => undefined);
      await admin.end();
      await stopServer();
    },
  };
}

// ---- the private cluster ----

function postgresBinDir(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v))
    .sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const bin = path.join(root, v, "bin");
    if (existsSync(path.join(bin, "initdb")) && existsSync(path.join(bin, "pg_ctl"))) return bin;
  }
  return undefined;
}

function postgresUser(): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === "postgres") return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no /etc/passwd: no such user
  }
  return undefined;
}

const CLUSTER_PREFIX = "lifeboat-test-pg-";

/**
 * Where clusters live: /dev/shm (memory) when it has room, which makes initdb
 * and CREATE DATABASE several times faster than on a busy disk; else the
 * temp dir. Docker's default /dev/shm (64 MB) is too small for two clusters.
 */
function clusterParents(): string[] {
  const parents = [os.tmpdir()];
  try {
    const fs = statfsSync("/dev/shm");
    if (fs.bavail * fs.bsize >= 1024 ** 3) parents.unshift("/dev/shm");
  } catch {
    // no /dev/shm
  }
  return parents;
}

async function startPrivateCluster(): Promise<{ url: string; stop: () => Promise<void> }> {
  const bin = postgresBinDir()!;
  const user = postgresUser()!;
  const pgCtl = path.join(bin, "pg_ctl");
  const parents = clusterParents();
  for (const parent of parents) removeAbandonedClusters(parent, pgCtl, user);
  const dir = await mkdtemp(path.join(parents[0]!, `${CLUSTER_PREFIX}${process.pid}-`));
  const data = path.join(dir, "data");
  const log = path.join(dir, "server.log");
  let running = false;
  const stopSync = (): void => {
    if (running) spawnSync(pgCtl, ["stop", "-D", data, "-m", "immediate", "-s"], { ...user, cwd: dir });
    running = false;
    rmSync(dir, { recursive: true, force: true });
  };
  // Stop the cluster however this process ends: normally (after() below, or
  // the exit handler if that never ran) or by a signal, which is then re-raised.
  const onSignal = (signal: NodeJS.Signals): void => {
    stopSync();
    process.kill(process.pid, signal);
  };
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const unhook = (): void => {
    process.removeListener("exit", stopSync);
    for (const signal of signals) process.removeListener(signal, onSignal);
  };
  process.once("exit", stopSync);
  for (const signal of signals) process.once(signal, onSignal);
  try {
    await chown(dir, user.uid, user.gid);
    await chmod(dir, 0o700);
    await run(
      path.join(bin, "initdb"),
      [...["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]],
      { user, cwd: dir },
    );
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const settings = [
        "-c listen_addresses=127.0.0.1",
        `-p ${port}`,
        `-k '${dir}'`,
        // synchronous_commit stays at its default (on), as on a real server: a test checks that
        // soft writes turn it off for their own transaction only. With fsync off it costs nothing.
        "-c fsync=off -c full_page_writes=off",
      ].join(" ");
      try {
        await run(pgCtl, ["start", "-D", data, "-l", log, "-w", "-t", "30", "-s", "-o", settings], {
          user,
          cwd: dir,
        });
        running = true;
        break;
      } catch (err) {
        const text = await readFile(log, "utf8").catch(() => "");
        // Another process took the port between freePort() and the bind: try another.
        if (attempt < 3 && /could not bind|Address already in use/.test(text)) continue;
        throw new Error(`${(err as Error).message}\n${text.slice(-2000)}`);
      }
    }
    return {
      url: `postgres://postgres@127.0.0.1:${port}/postgres`,
      stop: async () => {
        unhook();
        if (running)
          await run(pgCtl, ["stop", "-D", data, "-m", "immediate", "-w", "-s"], { user, cwd: dir });
        running = false;
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    unhook();
    stopSync();
    throw err;
  }
}

/** Clusters of test processes that died without stopping theirs (their pid is gone). */
function removeAbandonedClusters(tmp: string, pgCtl: string, user: { uid: number; gid: number }): void {
  for (const name of readdirSync(tmp)) {
    const m = name.startsWith(CLUSTER_PREFIX) ? /^(\d+)-/.exec(name.slice(CLUSTER_PREFIX.length)) : null;
    if (m === null || processAlive(Number(m[1]))) continue;
    const dir = path.join(tmp, name);
    spawnSync(pgCtl, ["stop", "-D", path.join(dir, "data"), "-m", "immediate", "-s"], { ...user, cwd: tmp });
    rmSync(dir, { recursive: true, force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function run(
  cmd: string,
  args: string[],
  opts: { user: { uid: number; gid: number }; cwd: string },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      uid: opts.user.uid,
      gid: opts.user.gid,
      cwd: opts.cwd,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C", LC_ALL: "C" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${path.basename(cmd)} ${args[0]} exited ${code}: ${stderr}`)),
    );
  });
}
