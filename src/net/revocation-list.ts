import type { Dispatcher } from "undici";
import { type Clock, LifeboatError } from "../base/index.js";
import { fetchJson } from "./fetch-json.js";
import { normalizeSerial } from "./serial.js";

export interface RevocationListOptions {
  /** A dispatcher holding the replicator's client certificate (createApiDispatcher). */
  dispatcher: Dispatcher;
  /** The control plane, https://host:port. */
  endpoint: string;
  clock: Clock;
  /** Fetch again when the list is older than this (default 60 s). */
  refreshMs?: number;
  /** Refuse every certificate when no fresh list could be had for this long (default 10 min). */
  maxStaleMs?: number;
}

export interface RevocationList {
  /** For verifyClientCertificate's isRevoked: refreshes when due; throws NET_REVOCATIONS_STALE when too old. */
  isRevoked(serial: string): Promise<boolean>;
  /** Fetches now. */
  refresh(): Promise<void>;
}

/**
 * How a replicator (or any process beside the control plane) learns which
 * client certificates were revoked: GET /api/v1/revocations, cached. A
 * decommissioned agent is refused by a replicator within `refreshMs`; if the
 * control plane cannot be reached, the last list serves until it is
 * `maxStaleMs` old, then every certificate is refused (fail closed) with
 * NET_REVOCATIONS_STALE until a fetch succeeds.
 */
export function createRevocationList(opts: RevocationListOptions): RevocationList {
  const refreshMs = opts.refreshMs ?? 60_000;
  const maxStaleMs = opts.maxStaleMs ?? 600_000;
  const url = `${opts.endpoint.replace(/\/+$/, "")}/api/v1/revocations`;
  let serials = new Set<string>();
  let fetchedAt = Number.NEGATIVE_INFINITY;
  let inFlight: Promise<void> | undefined;

  const refresh = (): Promise<void> =>
    (inFlight ??= (async () => {
      try {
        const r = await fetchJson<{ serials: string[] }>(opts.dispatcher, url);
        serials = new Set(r.serials.map(normalizeSerial));
        fetchedAt = opts.clock.now();
      } finally {
        inFlight = undefined;
      }
    })());

  return {
    refresh,
    async isRevoked(serial) {
      if (opts.clock.now() - fetchedAt > refreshMs) {
        try {
          await refresh();
        } catch (err) {
          if (opts.clock.now() - fetchedAt > maxStaleMs)
            throw new LifeboatError(
              "NET_REVOCATIONS_STALE",
              `no revocation list from ${opts.endpoint} for over ${Math.round(maxStaleMs / 1000)} s; refusing client certificates`,
              {
                hint: "Check that this replicator reaches the control plane and that its own certificate is valid.",
                cause: err,
                retryable: true,
              },
            );
        }
      }
      return serials.has(normalizeSerial(serial));
    },
  };
}
