import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { Agent, buildConnector } from "undici";
import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import { certFingerprint, formatFingerprint, parseFingerprint, sameFingerprint } from "./fingerprint.js";
import { openTunnel } from "./doctor/proxy.js";
import { CA_FINGERPRINT_HINT, toNetError } from "./net-errors.js";
import { checkPinnedServer } from "./pinned-ca.js";

export interface ApiDispatcherOptions {
  /** The CA certificate (PEM): the server's chain must verify against it and name the host. */
  caPem?: string;
  /**
   * SHA-256 of the CA certificate's DER (colons, case and openssl's
   * "sha256 Fingerprint=" prefix ignored). Alone, the server's chain must
   * contain that CA and that CA must have signed the leaf (checkPinnedServer);
   * with caPem, caPem must have this fingerprint.
   */
  caFingerprint?: string;
  /** The client certificate (PEM) and key, for mutual TLS (agents, replicators). */
  clientCertPem?: string;
  clientKeyPem?: string;
  /** Connect timeout in milliseconds (undici's default, 10 s, otherwise). */
  connectTimeoutMs?: number;
  /**
   * How long an idle connection stays open for reuse (ms; undici's default is 4 s). An agent
   * that reports every 5 s keeps its connection, and spares a TLS handshake a beat, with more.
   */
  keepAliveMs?: number;
  /** An HTTP CONNECT proxy to reach the server through (TLS, and the CA checks, go end to end inside it). */
  proxy?: URL;
  clock?: Clock;
}

/**
 * An undici Agent for Lifeboat's API (pass it as `dispatcher` to undici's
 * request/fetch, or to fetchJson), speaking TLS 1.3 only. With caPem, Node
 * verifies the chain and host name against that CA alone (not the system's
 * CAs); with only caFingerprint, the pinned check runs after each handshake;
 * with neither, the system's CAs are used. Connection failures come out as
 * LifeboatErrors (NET_CA_MISMATCH, NET_SERVER_NAME_MISMATCH, NET_TLS_FAILED,
 * NET_UNREACHABLE, NET_TIMEOUT, NET_CONNECTION_LOST).
 *
 * The caller closes it (`await agent.close()`) when done.
 */
export function createApiDispatcher(opts: ApiDispatcherOptions = {}): Agent {
  const pin = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);
  if (pin !== undefined && opts.caPem !== undefined && !sameFingerprint(certFingerprint(opts.caPem), pin)) {
    throw new LifeboatError(
      "NET_CA_MISMATCH",
      `the CA file has fingerprint ${certFingerprint(opts.caPem)}, not the pinned ${formatFingerprint(pin)}`,
      { hint: CA_FINGERPRINT_HINT },
    );
  }
  if ((opts.clientCertPem === undefined) !== (opts.clientKeyPem === undefined)) {
    throw new LifeboatError(
      "NET_CERT_PARAMS_INVALID",
      "a client certificate needs its key, and a key its certificate",
    );
  }
  const pinnedOnly = pin !== undefined && opts.caPem === undefined;
  const clock = opts.clock ?? systemClock;
  const inner = buildConnector({
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
    ...(opts.caPem !== undefined ? { ca: opts.caPem } : {}),
    ...(opts.clientCertPem !== undefined ? { cert: opts.clientCertPem, key: opts.clientKeyPem } : {}),
    // Pinned: Node cannot verify a chain whose CA it was not given; checkPinnedServer does, after
    // the handshake. A resumed session would carry no chain to check, so sessions are not cached.
    ...(pinnedOnly ? { rejectUnauthorized: false, maxCachedSessions: 0 } : { rejectUnauthorized: true }),
    ...(opts.connectTimeoutMs !== undefined ? { timeout: opts.connectTimeoutMs } : {}),
  });
  const connect: buildConnector.connector = (options, callback) => {
    const target = `${options.hostname}:${options.port || (options.protocol === "https:" ? 443 : 80)}`;
    if (options.protocol !== "https:") {
      // Bearer keys and install tokens must never cross the network in clear.
      callback(
        new LifeboatError("NET_TLS_FAILED", `${target}: Lifeboat's API is spoken over https:// only`, {
          hint: "Write the endpoint as https://HOST:PORT.",
          exitCode: 2,
        }),
        null,
      );
      return;
    }
    const handshake = (httpSocket?: Socket) =>
      inner({ ...options, ...(httpSocket ? { httpSocket } : {}) }, (err, socket) => {
        if (err) return callback(toNetError(err, target) as Error, null);
        let refused: LifeboatError | undefined;
        try {
          refused = pinnedOnly
            ? checkPinnedServer(socket as TLSSocket, options.hostname, target, pin, clock.now())
            : undefined;
        } catch (e) {
          // Bytes the server sent that do not parse as certificates: refuse, never throw from a socket event.
          refused = new LifeboatError("NET_TLS_FAILED", `cannot read the certificates ${target} sent`, {
            hint: "Check that the endpoint is a Lifeboat server.",
            cause: e,
          });
        }
        if (refused) {
          socket.destroy();
          return callback(refused, null);
        }
        callback(null, socket);
      });
    if (opts.proxy === undefined) handshake();
    else
      openTunnel(
        opts.proxy,
        options.hostname,
        Number(options.port || 443),
        opts.connectTimeoutMs ?? 10_000,
      ).then(
        (tunnel) => handshake(tunnel),
        (err: unknown) => callback(toNetError(err, target) as Error, null),
      );
  };
  return new Agent({
    connect,
    ...(opts.keepAliveMs !== undefined
      ? { keepAliveTimeout: opts.keepAliveMs, keepAliveMaxTimeout: opts.keepAliveMs }
      : {}),
  });
}
