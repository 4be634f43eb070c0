import { promises as fs } from "node:fs";
import path from "node:path";
import { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import {
  CONSISTENCY_LEVELS,
  type ConsistencyLevel,
  DEFAULT_RETENTION,
  Repository,
  collectGarbage,
  defaultKeyPath,
  exportDisk,
  forgetPits,
  generateKeyFile,
  importDisks,
  newRepositoryId,
  openBackend,
  parseRetention,
  readKeyFile,
  repositoryStats,
  resolvePit,
  runBackendChecks,
  verifyRepository,
  writeKeyFile,
} from "../store/index.js";
import { parseDuration, parseIntOption, parseSize, requireOption, withRepo } from "./context.js";
import { Progress, formatBytes, printJson, printLines } from "./output.js";
import { action } from "./action.js";

type RepoOpts = { repo?: string; keyFile?: string };
// In its own file so that commands (the agent's) can use it without store's imports.
export { action } from "./action.js";

const repoOptions = (c: Command) =>
  c
    .option("--repo <location>", "repository: a directory or s3://bucket/prefix?endpoint=...")
    .option(
      "--key-file <file>",
      "repository key (default: LIFEBOAT_KEY_FILE, then ~/.config/lifeboat/keys/<id>.key)",
    );

export function storeCommand(): Command {
  const store = new Command("store").description(
    "work with a repository directly: init, import, export, verify, gc",
  );

  repoOptions(store.command("init").description("create a repository and its key"))
    .option("--chunk-size <size>", "chunk size, a power of two from 16KiB to 16MiB", "64KiB")
    .action(
      action<RepoOpts & { chunkSize: string }>(async (ctx, o) => {
        const location = requireOption(o.repo, "--repo");
        const backend = await openBackend(location, { logger: ctx.logger });
        try {
          const id = newRepositoryId();
          const keyPath = path.resolve(o.keyFile ?? ctx.env.keyFile ?? defaultKeyPath(id));
          const key = generateKeyFile(id);
          // The key is written first: a repository without its key would be unusable.
          await writeKeyFile(keyPath, key);
          let repo: Repository;
          try {
            repo = await Repository.create(backend, key, {
              chunkSize: parseSize(o.chunkSize, "--chunk-size"),
            });
          } catch (err) {
            await fs.rm(keyPath, { force: true });
            throw err;
          }
          if (ctx.json)
            printJson({
              repository: { id, location: backend.properties.location, chunkSize: repo.config.chunkSize },
              keyFile: keyPath,
            });
          else {
            printLines([backend.properties.location, keyPath]);
            process.stderr.write(
              `repository ${id} created. Its key is ${keyPath}: without it every PIT is lost.\n` +
                `Keep an escrow copy: lifeboat store key export --repo ${location} --out <file>\n`,
            );
          }
        } finally {
          await backend.close();
        }
      }),
    );

  repoOptions(
    store.command("import").description("read whole disks (image files or block devices) into one PIT"),
  )
    .requiredOption("--server <name>", "source server the disks belong to")
    .option("--disk <path>", "raw image or block device (repeat for several disks, in order)", collect, [])
    .option("--consistency <level>", `consistency level to record: ${CONSISTENCY_LEVELS.join(", ")}`, "none")
    .action(
      action<RepoOpts & { server: string; disk: string[]; consistency: string }>(async (ctx, o) => {
        if (!CONSISTENCY_LEVELS.includes(o.consistency as ConsistencyLevel)) {
          throw new LifeboatError("USAGE", `unknown consistency level ${o.consistency}`, {
            hint: `use one of ${CONSISTENCY_LEVELS.join(", ")}`,
            exitCode: 2,
          });
        }
        await withRepo(ctx, o, async (repo) => {
          const progress = new Progress(ctx.env.interactive, "import");
          const started = Date.now();
          const { pit, stats } = await importDisks(repo, {
            server: o.server,
            disks: o.disk,
            consistency: o.consistency as ConsistencyLevel,
            onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
          });
          progress.done();
          const seconds = (Date.now() - started) / 1000;
          if (ctx.json) printJson({ pit, stats: { ...stats, seconds } });
          else
            printLines([
              `PIT ${pit.id} (${pit.server} #${pit.seq}, ${pit.consistency}): ${pit.disks.length} disk(s), ${formatBytes(stats.bytesRead)} read in ${seconds.toFixed(1)}s`,
              `  new chunks ${stats.newChunks} (${formatBytes(stats.storedBytes)} stored in ${stats.packs} packs), already present ${stats.dedupChunks}, zero ${formatBytes(stats.zeroBytes)}`,
            ]);
        });
      }),
    );

  repoOptions(
    store.command("export").description("write one disk of a PIT to a file (sparse) or block device"),
  )
    .requiredOption("--pit <id>", "PIT id, or latest")
    .option("--server <name>", "server (needed with --pit latest)")
    .requiredOption("--disk <index>", "disk index, from 0")
    .requiredOption("--out <file>", "output image file or block device")
    .option("--force", "overwrite --out if it exists (a block device is always overwritten whole)")
    .action(
      action<RepoOpts & { pit: string; server?: string; disk: string; out: string; force?: boolean }>(
        async (ctx, o) => {
          if (o.pit === "latest" && !o.server) {
            throw new LifeboatError("USAGE", "--pit latest needs --server", {
              hint: "give --server NAME",
              exitCode: 2,
            });
          }
          const index = parseIntOption(o.disk, "--disk");
          await withRepo(ctx, o, async (repo) => {
            const pit = await resolvePit(repo, o.pit, o.server);
            const progress = new Progress(ctx.env.interactive, "export");
            const started = Date.now();
            const result = await exportDisk(repo, pit, index, path.resolve(o.out), {
              onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal),
              overwrite: Boolean(o.force),
            });
            progress.done();
            const seconds = (Date.now() - started) / 1000;
            if (ctx.json) printJson({ pit: pit.id, disk: index, ...result, seconds });
            else
              printLines([
                `${result.path}: ${formatBytes(result.sizeBytes)} (${formatBytes(result.dataBytes)} data) from PIT ${pit.id} in ${seconds.toFixed(1)}s`,
              ]);
          });
        },
      ),
    );

  repoOptions(store.command("verify").description("check the repository; --read-data reads every chunk"))
    .option("--read-data", "decrypt every referenced chunk and check it against its id")
    .action(
      action<RepoOpts & { readData?: boolean }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const progress = new Progress(ctx.env.interactive, "verify (chunks)");
          const report = await verifyRepository(repo, {
            readData: Boolean(o.readData),
            onProgress: (d, t) => progress.update(d, t),
          });
          progress.done();
          if (ctx.json) printJson(report);
          else {
            printLines([
              `${report.pits} PITs, ${report.packs} packs, ${report.pages} pages; ${report.referencedChunks} chunks referenced${report.readData ? `, ${formatBytes(report.bytesRead)} read` : ""}`,
              ...(report.transientErrors
                ? [`${report.transientErrors} read(s) failed once and then succeeded (transient, not damage)`]
                : []),
              ...report.damage.flatMap((d) => [
                `DAMAGED ${d.kind} ${d.object} [${d.code}]: ${d.message}`,
                ...d.affects.map(
                  (a) =>
                    `  affects PIT ${a.pit} (${a.server}) disk ${a.disk} bytes ${a.ranges.map(([s, e]) => `${s}-${e - 1}`).join(", ")}`,
                ),
              ]),
              report.ok ? "no damage found" : `${report.damage.length} damaged object(s)`,
            ]);
          }
          return report.ok ? 0 : 3;
        }),
      ),
    );

  repoOptions(
    store
      .command("gc")
      .description("delete objects no PIT references (safe while imports and replication run)"),
  )
    .option("--dry-run", "say what would be deleted, delete nothing")
    .option("--safety-margin <duration>", "keep objects written this recently", "60s")
    .action(
      action<RepoOpts & { dryRun?: boolean; safetyMargin: string }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const report = await collectGarbage(repo, {
            dryRun: Boolean(o.dryRun),
            safetyMarginMs: parseDuration(o.safetyMargin, "--safety-margin"),
          });
          if (ctx.json) printJson(report);
          else
            printLines([
              `${report.pits} PITs reach ${report.reachable} of ${report.objects} objects`,
              `${report.dryRun ? "would move" : "moved"} ${report.trashed} unreferenced object(s) to the trash; ${report.dryRun ? "would put back" : "put back"} ${report.restored}; ${report.dryRun ? "would delete" : "deleted"} ${report.deleted} (${formatBytes(report.deletedBytes)}) for good`,
              ...(report.waitingReason ? [report.waitingReason] : []),
              ...(report.staleLocksBroken ? [`broke ${report.staleLocksBroken} stale lock(s)`] : []),
            ]);
        }),
      ),
    );

  repoOptions(store.command("forget").description("apply the retention policy: forget PITs it does not keep"))
    .option("--server <name>", "only this server's PITs")
    .option("--retention <spec>", "tiers as every:keep, e.g. 10m:1h,1h:24h,1d:7d (default: that)")
    .option("--dry-run", "show what would be forgotten")
    .action(
      action<RepoOpts & { server?: string; retention?: string; dryRun?: boolean }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const policy = o.retention ? parseRetention(o.retention) : DEFAULT_RETENTION;
          const report = await forgetPits(repo, policy, {
            ...(o.server ? { server: o.server } : {}),
            dryRun: Boolean(o.dryRun),
          });
          if (ctx.json) printJson(report);
          else
            printLines(
              report.servers.flatMap((s) => [
                `${s.server}: keep ${s.keep.length}, ${report.dryRun ? "would forget" : "forgot"} ${s.forget.length}`,
                ...s.forget.map((f) => `  ${f.id} (age ${(f.ageMs / 3_600_000).toFixed(1)} h)`),
              ]),
            );
        }),
      ),
    );

  repoOptions(store.command("stats").description("objects, bytes and PITs in the repository")).action(
    action<RepoOpts>(async (ctx, o) =>
      withRepo(ctx, o, async (repo) => {
        const s = await repositoryStats(repo);
        if (ctx.json) printJson(s);
        else
          printLines([
            `repository ${s.repositoryId} at ${s.location} (chunk size ${formatBytes(s.chunkSize)})`,
            `${s.pits} PITs; ${s.objects.packs} packs, ${s.objects.pages} pages; ${formatBytes(s.storedBytes.total)} stored`,
            ...s.servers.map(
              (v) =>
                `  ${v.name}: ${v.pits} PITs, latest ${v.latest}, ${formatBytes(v.logicalBytes)} of disks`,
            ),
          ]);
      }),
    ),
  );

  repoOptions(
    store
      .command("reindex")
      .description("rebuild the PIT catalog of a control-plane database from the repository alone"),
  )
    .requiredOption(
      "--db <url>",
      "control-plane database: an SQLite file or postgres:// URL (created if new)",
    )
    .action(
      action<RepoOpts & { db: string }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          // The control plane's modules load only for this command.
          const { reindexCatalog } = await import("./reindex.js");
          const r = await reindexCatalog(repo, o.db);
          if (ctx.json) printJson(r);
          else printLines([`${r.pits} PIT(s) of ${r.servers} server(s) indexed into ${r.db}`]);
        }),
      ),
    );

  const key = store.command("key").description("escrow copies of the repository key");
  repoOptions(key.command("export").description("copy the repository key to a file (0600) for safekeeping"))
    .requiredOption("--out <file>", "where to write the copy (must not exist)")
    .action(
      action<RepoOpts & { out: string }>(async (ctx, o) =>
        withRepo(ctx, o, async (repo) => {
          const out = path.resolve(o.out);
          await writeKeyFile(out, repo.keyFile);
          if (ctx.json) printJson({ repositoryId: repo.config.id, keyFile: out });
          else printLines([out]);
        }),
      ),
    );
  key
    .command("import")
    .description("install an escrow copy of a repository's key after checking it opens the repository")
    .option("--repo <location>", "repository the key belongs to")
    .requiredOption("--in <file>", "the escrow copy")
    .option(
      "--key-file <file>",
      "where to install it (default: LIFEBOAT_KEY_FILE, then ~/.config/lifeboat/keys/<id>.key)",
    )
    .action(
      action<RepoOpts & { in: string }>(async (ctx, o) => {
        const copy = await readKeyFile(path.resolve(o.in));
        const backend = await openBackend(requireOption(o.repo, "--repo"), { logger: ctx.logger });
        try {
          await Repository.open(backend, copy); // proves the key matches
          const dest = path.resolve(o.keyFile ?? ctx.env.keyFile ?? defaultKeyPath(copy.repositoryId));
          await writeKeyFile(dest, copy);
          if (ctx.json) printJson({ repositoryId: copy.repositoryId, keyFile: dest });
          else printLines([dest]);
        } finally {
          await backend.close();
        }
      }),
    );

  store
    .command("validate-backend")
    .description("run the backend contract against a storage location (writes and deletes test objects)")
    .argument("<location>", "directory or s3://bucket/prefix?endpoint=...")
    .action(
      action<object>(async (ctx, _o, cmd) => {
        const backend = await openBackend(cmd.args[0]!, { logger: ctx.logger });
        try {
          const r = await runBackendChecks(backend);
          const failed = r.checks.filter((c) => !c.ok);
          if (ctx.json) printJson(r);
          else
            printLines(
              r.checks.map(
                (c) => `${c.ok ? "ok  " : "FAIL"} ${c.name} (${c.ms} ms)${c.detail ? `: ${c.detail}` : ""}`,
              ),
            );
          return failed.length ? 1 : 0;
        } finally {
          await backend.close();
        }
      }),
    );
  return store;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
