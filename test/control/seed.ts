import type { Database } from "../../src/control/db/index.js";
import { T0 } from "./helpers.js";

/** Rows for metrics, events and webhook tests, written straight into the tables. */
export async function addServer(
  database: Database,
  id: string,
  name: string,
  o: {
    state?: string;
    lag?: number | null;
    backlog?: number | null;
    lastSeen?: number;
    registeredAt?: number;
  } = {},
): Promise<void> {
  await database.db
    .insertInto("servers")
    .values({
      id,
      name,
      hostname: null,
      state: o.state ?? "CONTINUOUS",
      lag_seconds: o.lag ?? null,
      backlog_bytes: o.backlog ?? null,
      last_seen_at: o.lastSeen ?? T0,
      inventory_json: null,
      replicator_id: null,
      token_id: null,
      registered_at: o.registeredAt ?? T0 - 86_400_000,
      decommissioned_at: null,
    })
    .execute();
}

let pitCounter = 0;
export async function addPit(
  database: Database,
  serverId: string,
  name: string,
  timeMs: number,
): Promise<string> {
  const id = (++pitCounter).toString(16).padStart(24, "0");
  await database.db
    .insertInto("pits")
    .values({
      id,
      repository_id: "repo",
      server_id: serverId,
      server_name: name,
      seq: pitCounter,
      time_ms: timeMs,
      consistency: "filesystem",
      disks_json: "[]",
      labels_json: "{}",
    })
    .execute();
  return id;
}

export async function addReplicator(
  database: Database,
  id: string,
  name: string,
  lastSeen: number,
): Promise<void> {
  await database.db
    .insertInto("replicators")
    .values({
      id,
      name,
      address: "10.0.0.9:443",
      state: "ACTIVE",
      last_seen_at: lastSeen,
      registered_at: T0 - 86_400_000,
      decommissioned_at: null,
      token_id: null,
    })
    .execute();
}

/** A server's replication settings override, as the settings API would store it. */
export async function setReplication(
  database: Database,
  scope: string,
  json: Record<string, unknown>,
): Promise<void> {
  await database.db
    .insertInto("settings")
    .values({ scope, kind: "replication", json: JSON.stringify(json), updated_at: T0, updated_by: "test" })
    .execute();
}
