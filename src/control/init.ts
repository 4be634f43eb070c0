import { chmod, mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { type Clock, LifeboatError, type Logger, silentLogger, systemClock } from "../base/index.js";
import { createCa, issueServerCert, issueSigningCert } from "../net/index.js";
import { Repository, generateKeyFile, newRepositoryId, openBackend, writeKeyFile } from "../store/index.js";
import { DEFAULT_DATA_DIR, dataPaths, parseConfig } from "./config.js";
import { migrateToLatest, openDatabase } from "./db/index.js";
import { issueSecret } from "./secrets.js";

export interface InitOptions {
  dataDir?: string;
  /** sqlite:FILE or postgres://...; default sqlite:D/lifeboat.db. */
  databaseUrl?: string;
  /** default D/repo */
  repository?: string;
  hostnames?: string[];
  listen?: string;
  clock?: Clock;
  logger?: Logger;
}

export interface InitResult {
  dataDir: string;
  /** Every file and directory made, in order. */
  created: string[];
  /** The first admin API key (`<id>.<secret>`); also in D/admin-api.key. */
  adminApiKey: string;
  adminApiKeyId: string;
  databaseUrl: string;
  repository: string;
}

/**
 * `lifeboat server init`: makes a data directory with the CA, the server and
 * signing certificates, the migrated database, the repository and its key,
 * and a first admin API key. config.json is written last, so a directory
 * with it is a finished installation; a failed step removes what this run
 * made inside D (and D itself if it made it). A PostgreSQL database or S3
 * repository given from outside keeps what was written there (a migrated,
 * empty schema or repository), and a new init refuses neither.
 *
 * Throws SERVER_EXISTS when D holds anything already.
 */
export async function initServer(opts: InitOptions = {}): Promise<InitResult> {
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? silentLogger;
  const dataDir = path.resolve(opts.dataDir ?? DEFAULT_DATA_DIR);
  const p = dataPaths(dataDir);
  const entries = await readdir(dataDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  if (entries !== undefined && entries.length > 0) {
    throw new LifeboatError(
      "SERVER_EXISTS",
      `${dataDir} is not empty: a server is installed there or it holds other files`,
      {
        hint: "init never overwrites: give another --data-dir, or move the old one away if you mean to start over",
        exitCode: 1,
      },
    );
  }
  // `--db sqlite` alone means the default file in D.
  const databaseUrl =
    opts.databaseUrl === undefined || opts.databaseUrl === "sqlite"
      ? `sqlite:${path.join(dataDir, "lifeboat.db")}`
      : opts.databaseUrl;
  const repository = opts.repository ?? path.join(dataDir, "repo");
  const config = parseConfig({
    version: 1,
    dataDir,
    databaseUrl,
    repository,
    hostnames: opts.hostnames && opts.hostnames.length > 0 ? opts.hostnames : ["localhost", "127.0.0.1"],
    ...(opts.listen ? { listen: opts.listen } : {}),
  });

  const created: string[] = [];
  /** Files made on the side (SQLite's journal) that go with a failed run but are not reported. */
  const cleanup: string[] = [];
  const madeDir = entries === undefined;
  const write = async (file: string, text: string, mode: number) => {
    await writeFile(file, text, { mode, flag: "wx" });
    await chmod(file, mode);
    created.push(file);
  };
  try {
    await mkdir(dataDir, { recursive: true, mode: 0o755 });
    if (madeDir) created.push(dataDir);
    await mkdir(p.keys, { mode: 0o700 });
    await chmod(p.keys, 0o700);
    created.push(p.keys);

    const ca = await createCa({ clock });
    await write(p.caCert, ca.certPem, 0o644);
    await write(p.caKey, ca.keyPem, 0o600);
    const server = await issueServerCert(ca, { hostnames: [...config.hostnames], clock });
    await write(p.serverCert, server.certPem, 0o644);
    await write(p.serverKey, server.keyPem, 0o600);
    const signing = await issueSigningCert(ca, { clock });
    await write(p.signingCert, signing.certPem, 0o644);
    await write(p.signingKey, signing.keyPem, 0o600);

    const repoId = newRepositoryId();
    const key = generateKeyFile(repoId);
    await writeKeyFile(p.repoKey, key);
    await chmod(p.repoKey, 0o600);
    created.push(p.repoKey);
    const backend = await openBackend(repository, { logger, clock });
    try {
      await Repository.create(backend, key, { clock });
      if (!repository.includes("://")) created.push(path.resolve(repository));
    } finally {
      await backend.close();
    }

    const sqliteFile = databaseUrl.startsWith("sqlite:")
      ? path.resolve(databaseUrl.slice("sqlite:".length))
      : undefined;
    const existed =
      sqliteFile !== undefined &&
      (await stat(sqliteFile).then(
        () => true,
        () => false,
      ));
    const database = await openDatabase(databaseUrl, { logger });
    if (sqliteFile !== undefined && !existed) {
      created.push(sqliteFile);
      for (const suffix of ["-wal", "-shm", "-journal"]) cleanup.push(sqliteFile + suffix);
    }
    const admin = issueSecret("key");
    try {
      await migrateToLatest(database);
      await database.db
        .insertInto("api_keys")
        .values({
          id: admin.id,
          name: "admin (server init)",
          role: "admin",
          key_hash: admin.hash,
          created_at: clock.now(),
          created_by: "init",
          revoked_at: null,
          last_used_at: null,
        })
        .execute();
    } finally {
      await database.close();
    }
    await write(p.adminApiKey, `${admin.value}\n`, 0o600);
    await write(p.config, `${JSON.stringify(config, null, 2)}\n`, 0o644);
    logger.info({ dataDir }, "server initialized");
    return { dataDir, created, adminApiKey: admin.value, adminApiKeyId: admin.id, databaseUrl, repository };
  } catch (err) {
    for (const f of [...created].reverse())
      await rm(f, { recursive: true, force: true }).catch(() => undefined);
    for (const f of cleanup) await rm(f, { force: true }).catch(() => undefined);
    throw err;
  }
}
