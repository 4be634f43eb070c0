import { admitStream } from "./generations.js";
import type { FastifyInstance } from "fastify";
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Server as TlsServer } from "node:tls";
import { type Clock, LifeboatError, type Logger, createLogger, systemClock } from "../base/index.js";
import { assertPrivateFile, serverTlsOptions, verifyClientCertificate } from "../net/index.js";
import { Replicator } from "../replicator/index.js";
import { type Repository, openRepository } from "../store/index.js";
import { attachWire, wireConnectionHandler } from "../wire/index.js";
import { isRevoked } from "./auth.js";
import { buildApp } from "./app.js";
import { reportIngest } from "./routes/metrics.js";
import { recordPit } from "./catalog.js";
import { type ControlConfig, dataPaths, loadConfig } from "./config.js";
import { type Database, migrateToLatest, openDatabase, tryAcquireLease } from "./db/index.js";
import { sweepDisconnected } from "./heartbeats.js";
import { JobRunner } from "./job-runner.js";
import { launchHandler } from "./launch-job.js";
import { planHandler } from "./plans.js";
import { balancePool } from "./replicator-pool.js";
import { assignments, takeReplicaEpoch } from "./replicators.js";
import { applyRetention } from "./retention.js";
import { startRpoChecks } from "./rpo.js";
import { VERIFY_JOB, startRepositoryChecks, verifyJobHandler } from "./repository-checks.js";
import { WebhookDeliverer } from "./webhook-delivery.js";

export interface RunningServer {
  app: FastifyInstance;
  /** Where it listens (port resolved when the config said 0). */
  host: string;
  port: number;
  url: string;
  /** Stops listening, lets requests in flight finish, closes the database. Idempotent. */
  close(): Promise<void>;
}

export interface StartOptions {
  clock?: Clock;
  logger?: Logger;
  /** Overrides the config's listen address (tests: "127.0.0.1:0"). */
  listen?: string;
  /** Close on SIGTERM and SIGINT (default true). */
  handleSignals?: boolean;
  /** Run the embedded replicator on the same port (default true; `--no-replicator`). */
  replicator?: boolean;
}

/**
 * `lifeboat server start`: loads the config, refuses to start while a key
 * file is open to others (FILE_MODE_INSECURE naming the file), migrates the
 * database, and listens with TLS 1.3 (client certificates asked for, not
 * required). Logs are pino JSON. SIGTERM closes gracefully. While it runs,
 * it marks servers silent for heartbeatTimeoutSeconds DISCONNECTED, checks
 * every server's RPO (rpo.ts) and delivers events to webhooks
 * (webhook-delivery.ts), those two on one instance at a time. Unless
 * told otherwise it embeds the replicator: agents' replication streams
 * (ALPN lifeboat-wire/1 on the same port, mutual TLS with their own
 * certificate, revocations honoured) are written to the configured repository.
 */
export async function startServer(
  source: string | ControlConfig,
  opts: StartOptions = {},
): Promise<RunningServer> {
  const config = typeof source === "string" ? await loadConfig(dataPaths(source).config) : source;
  const logger = opts.logger ?? createLogger("info", "lifeboat-server");
  const clock = opts.clock ?? systemClock;
  const p = dataPaths(config.dataDir);
  for (const [file, what] of [
    [p.caKey, "CA private key"],
    [p.serverKey, "server private key"],
    [p.signingKey, "signing private key"],
    [p.repoKey, "repository key"],
    [p.adminApiKey, "admin API key"],
  ] as const) {
    await assertPrivateFile(file, what);
  }
  const [caCert, caKey, serverCert, serverKey] = await Promise.all(
    [p.caCert, p.caKey, p.serverCert, p.serverKey].map((f) => readFile(f, "utf8")),
  );
  const database = await openDatabase(config.databaseUrl, { logger });
  let app: FastifyInstance;
  let repo: Repository | undefined;
  let replicator: Replicator | undefined;
  let opening: Promise<Repository> | undefined;
  const openRepo = () =>
    (opening ??= openRepository(config.repository, { keyFile: p.repoKey, logger, clock }).then(
      (r) => (repo = r),
    ));
  const launch = launchHandler({
    database,
    clock,
    repo: openRepo,
    launchRoot: config.launchRoot ?? path.join(config.dataDir, "launches"),
  });
  const handlers: ConstructorParameters<typeof JobRunner>[0]["handlers"] = {
    drill: launch,
    recovery: launch,
  };
  const runner = new JobRunner({
    database,
    clock,
    logger,
    handlers,
    waitsOnOthers: ["plan"],
    claimTimeoutMs: config.jobClaimTimeoutSeconds * 1000,
  });
  handlers.plan = planHandler({ database, clock, poke: () => runner.poke() });
  handlers[VERIFY_JOB] = verifyJobHandler({ database, clock, repo: openRepo });
  try {
    await migrateToLatest(database);
    app = await buildApp({
      database,
      config,
      ca: { certPem: caCert!, keyPem: caKey! },
      clock,
      logger,
      jobs: runner,
      repo: openRepo,
      https: serverTlsOptions({ certPem: serverCert!, keyPem: serverKey!, caPem: caCert! }),
    });
    if (opts.replicator !== false) {
      replicator = embeddedReplicator(await openRepo(), database, clock, logger, runner.instance);
      reportIngest(app, replicator);
      attachWire(
        app.server as unknown as TlsServer, // fastify built it with `https`: an https.Server, a tls.Server
        wireConnectionHandler(replicator.wire, async (socket) => {
          const id = await verifyClientCertificate(socket, {
            caPem: caCert!,
            isRevoked: (serial) => isRevoked(database, serial),
            clock,
          });
          return { id: `${id.role}:${id.subjectId}` };
        }),
      );
    }
    const listen = opts.listen ?? config.listen;
    const m = /^\[?(.*?)\]?:(\d+)$/.exec(listen)!;
    await app.listen({ host: m[1]!, port: Number(m[2]) });
    runner.start();
  } catch (err) {
    await runner.close();
    await replicator?.close();
    await repo?.close();
    await database.close();
    throw err;
  }
  const address = app.server.address() as AddressInfo;
  // Every instance sweeps; the sweep is safe to run from several at once (heartbeats.ts).
  const timeoutMs = config.heartbeatTimeoutSeconds * 1000;
  let sweeping: Promise<unknown> = Promise.resolve();
  const poolHolder = runner.instance;
  const poolEveryMs = Math.min(10_000, Math.max(1000, timeoutMs / 4));
  const sweeper = setInterval(() => {
    sweeping = sweepDisconnected(database, clock, timeoutMs)
      .then(
        (r) => {
          if (r.servers.length + r.replicators.length > 0) logger.warn(r, "disconnected");
        },
        (err: unknown) => logger.error({ err }, "the disconnected sweep failed"),
      )
      .then(() => poolTick(database, clock, logger, { holder: poolHolder, timeoutMs, everyMs: poolEveryMs }))
      .then(() => (replicator ? releaseElsewhere(database, replicator) : undefined))
      .catch((err: unknown) => logger.error({ err }, "the replicator pool's balance failed"));
  }, poolEveryMs);
  sweeper.unref();
  // Once across instances, each under its lease: RPO transitions become events; events go to webhooks.
  const rpoChecks = startRpoChecks({ database, clock, logger, instance: runner.instance });
  const deliverer = new WebhookDeliverer({ database, clock, logger, instance: runner.instance });
  deliverer.start();
  // Repository size now and then, and a verify a day (a full read a week): repository-checks.ts.
  const repoChecks = startRepositoryChecks({
    database,
    clock,
    logger,
    instance: runner.instance,
    repo: openRepo,
    onJob: () => runner.poke(),
  });
  let closing: Promise<void> | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    logger.info({ signal }, "shutting down");
    void close();
  };
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      process.removeListener("SIGTERM", onSignal);
      process.removeListener("SIGINT", onSignal);
      clearInterval(sweeper);
      await rpoChecks.close();
      await repoChecks.close();
      await deliverer.close();
      // Wire connections first: the HTTP server's close waits for every socket.
      await runner.close();
      await replicator?.close();
      await app.close();
      await (opening?.catch(() => undefined) ?? Promise.resolve());
      await repo?.close();
      await sweeping;
      await database.close();
      logger.info("server stopped");
    })());
  if (opts.handleSignals !== false) {
    process.once("SIGTERM", onSignal);
    process.once("SIGINT", onSignal);
  }
  const host = address.address.includes(":") ? `[${address.address}]` : address.address;
  logger.info(
    {
      address: `${host}:${address.port}`,
      database: database.location,
      replicator: replicator ? config.repository : "off",
    },
    "listening",
  );
  return { app, host: address.address, port: address.port, url: `https://${host}:${address.port}`, close };
}

/**
 * The replicator `server start` embeds: an agent's stream is accepted when
 * its certificate names a registered, not decommissioned server and its
 * HELLO claims that same server; PITs carry the server's registered name.
 */
function embeddedReplicator(
  repo: Repository,
  database: Database,
  clock: Clock,
  logger: Logger,
  instance: string,
): Replicator {
  return new Replicator({
    repo,
    clock,
    logger,
    // Fencing (store/head.ts): each instance's embedded replicator is a holder of its own.
    takeEpoch: async (server, peer, headEpoch) => {
      const serverId = peer.id.split(":", 2)[1]!;
      const epoch = await takeReplicaEpoch(database, clock, serverId, `control-plane:${instance}`, headEpoch);
      if (epoch === undefined)
        throw new LifeboatError(
          "REPLICATOR_NOT_ASSIGNED",
          `the stream of server ${server} was just taken elsewhere`,
          {
            hint: "the agent reads its replicator's address from its settings and reconnects there",
            retryable: true,
          },
        );
      return epoch;
    },
    onPit: (server, pit) => {
      void (async () => {
        const row = await database.db
          .selectFrom("servers")
          .select("id")
          .where("name", "=", server)
          .executeTakeFirst();
        if (!row) return;
        await recordPit(database, repo.config.id, row.id, pit, clock);
        await applyRetention(database, repo, row.id, server);
      })().catch((err: unknown) => logger.error({ err, pit: pit.id }, "cannot add the PIT to the catalog"));
    },
    serverName: async (peer, hello) => {
      const [role, serverId] = peer.id.split(":", 2);
      if (role !== "agent" || !serverId || hello.agent.serverId !== serverId) {
        throw new LifeboatError(
          "AUTH_FORBIDDEN",
          `${peer.id} may not replicate server ${hello.agent.serverId}`,
          { hint: "an agent replicates only the server its certificate names", retryable: false },
        );
      }
      const row = await database.db
        .selectFrom("servers")
        .select(["name", "decommissioned_at"])
        .where("id", "=", serverId)
        .executeTakeFirst();
      if (!row || row.decommissioned_at !== null) {
        throw new LifeboatError("SERVER_NOT_FOUND", `server ${serverId} is not registered here`, {
          hint: "register the agent again with a new install token",
          retryable: false,
        });
      }
      // A fenced server, or a disk of an older generation, is refused before anything is written.
      await admitStream(
        database,
        clock,
        serverId,
        hello.disks.map((d) => d.index),
        hello.generations,
      );
      // A server assigned to a separate replicator sends there (GET /api/v1/agent/settings says where).
      const elsewhere = (await assignments(database)).get(serverId);
      if (elsewhere)
        throw new LifeboatError(
          "REPLICATOR_NOT_ASSIGNED",
          `server ${serverId} is assigned to replicator ${elsewhere}`,
          {
            hint: "the agent reads its replicator's address from its settings and reconnects there",
            retryable: true,
          },
        );
      return row.name;
    },
  });
}

/** Balances the replicator pool when this instance holds (or takes) its lease. */
async function poolTick(
  database: Database,
  clock: Clock,
  logger: Logger,
  o: { holder: string; timeoutMs: number; everyMs: number },
): Promise<void> {
  if (!(await tryAcquireLease(database.db, "replicator-pool", o.holder, o.everyMs * 3, clock))) return;
  const moves = await balancePool(database, clock, { heartbeatTimeoutMs: o.timeoutMs });
  for (const m of moves) logger.warn(m, "server reassigned by the replicator pool");
}

/** Ends the embedded replicator's streams of servers now assigned to a separate replicator. */
async function releaseElsewhere(database: Database, replicator: Replicator): Promise<void> {
  const names = replicator.servers();
  if (names.length === 0) return;
  const rows = await database.db
    .selectFrom("servers")
    .select(["id", "name", "fenced"])
    .where("name", "in", names)
    .execute();
  const assigned = await assignments(database);
  // A fenced server's stream ends too: its agent reconnects and is refused (generations.ts).
  for (const r of rows) if (assigned.get(r.id) || r.fenced !== null) await replicator.release(r.name);
}
