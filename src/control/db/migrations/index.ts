import type { Migration } from "kysely";
import { initial } from "./0001-initial.js";
import { replicatorsJobs } from "./0002-replicators-jobs.js";
import { commands } from "./0003-commands.js";
import { launch } from "./0004-launch.js";
import { webhooks } from "./0005-webhooks.js";
import { consoleTables } from "./0006-console.js";
import { replicatorPool } from "./0007-replicator-pool.js";
import { failback } from "./0008-failback.js";
import { replicaEpochs } from "./0009-replica-epochs.js";
import { repositoryChecks } from "./0010-repository-checks.js";
import { replicatorIngest } from "./0011-replicator-ingest.js";

/**
 * Every migration this build knows, keyed by name. Names sort in the order
 * they apply ("0001_initial", "0002_...") and are never reused or renamed:
 * the database records the names it has run (table kysely_migration), and a
 * database that has run a name this build does not know is refused as newer
 * (DB_SCHEMA_TOO_NEW). Provided as an object rather than read from a folder so
 * the code can be bundled into one file.
 */
export const MIGRATIONS: Readonly<Record<string, Migration>> = Object.freeze({
  "0001_initial": initial,
  "0002_replicators_jobs": replicatorsJobs,
  "0003_commands": commands,
  "0004_launch": launch,
  "0005_webhooks": webhooks,
  "0006_console": consoleTables,
  "0007_replicator_pool": replicatorPool,
  "0008_failback": failback,
  "0009_replica_epochs": replicaEpochs,
  "0010_repository_checks": repositoryChecks,
  "0011_replicator_ingest": replicatorIngest,
});
