import type { Socket } from "node:net";
import { type TLSSocket, connect } from "node:tls";
import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import {
  certFingerprint,
  checkPinnedServer,
  formatFingerprint,
  openTunnel,
  parseFingerprint,
  sameFingerprint,
  toNetError,
} from "../net/index.js";
import { WIRE_ALPN } from "./listener.js";

/** The errno toNetError reads as a timeout (NET_TIMEOUT). */
const HANDSHAKE_TIMEOUT_ERRNO = "ETIMEDOUT";

export interface WireConnectOptions {
  host: string;
  port: number;
  /** The CA certificate (PEM): Node verifies the server's chain and name against it alone. */
  caPem?: string;
  /** SHA-256 of the CA certificate (as openssl prints it); alone, the chain is checked against the pin after the handshake. */
  caFingerprint?: string;
  /** The client certificate and key the agent received at registration. */
  certPem: string;
  keyPem: string;
  /** Name to check the server certificate against (default: host). */
  servername?: string;
  /** Handshake timeout (default 15 s). */
  timeoutMs?: number;
  /** An HTTP CONNECT proxy to reach the replicator through; TLS and its checks go end to end inside it. */
  proxy?: URL;
  clock?: Clock;
}

/**
 * Opens a wire connection: TLS 1.3, ALPN `lifeboat-wire/1` only, the client
 * certificate for mutual TLS, and the server checked against the CA file or
 * pinned fingerprint (as the API client does). Resolves with the socket once
 * the server agreed to the wire protocol; errors are LifeboatErrors
 * (NET_* from the handshake, WIRE_NOT_OFFERED when the server does not speak it).
 */
export function connectWire(opts: WireConnectOptions): Promise<TLSSocket> {
  const pin = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);
  if (pin === undefined && opts.caPem === undefined) {
    return Promise.reject(
      new LifeboatError("WIRE_NO_TRUST", "a wire connection needs the CA file or its fingerprint", {
        hint: "Give --ca-file or --ca-fingerprint, as at agent install.",
        exitCode: 2,
      }),
    );
  }
  if (pin !== undefined && opts.caPem !== undefined && !sameFingerprint(certFingerprint(opts.caPem), pin)) {
    return Promise.reject(
      new LifeboatError(
        "NET_CA_MISMATCH",
        `the CA file has fingerprint ${certFingerprint(opts.caPem)}, not the pinned ${formatFingerprint(pin)}`,
        {
          hint: "Check --ca-file and --ca-fingerprint name the same CA (the server's ca.pem).",
        },
      ),
    );
  }
  if (opts.proxy !== undefined) {
    const { proxy, ...direct } = opts;
    return openTunnel(proxy, opts.host, opts.port, opts.timeoutMs ?? 15_000).then(
      (tunnel) => handshake(direct, tunnel),
      (err: unknown) => Promise.reject(toNetError(err, `${opts.host}:${opts.port}`) as Error),
    );
  }
  return handshake(opts);
}

function handshake(opts: WireConnectOptions, tunnel?: Socket): Promise<TLSSocket> {
  const pin = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);
  const pinnedOnly = opts.caPem === undefined;
  const target = `${opts.host}:${opts.port}`;
  const clock = opts.clock ?? systemClock;
  return new Promise((resolve, reject) => {
    const socket = connect({
      ...(tunnel ? { socket: tunnel, servername: opts.servername ?? opts.host } : {}),
      host: opts.host,
      port: opts.port,
      ...(opts.servername ? { servername: opts.servername } : {}),
      minVersion: "TLSv1.3",
      maxVersion: "TLSv1.3",
      ALPNProtocols: [WIRE_ALPN],
      cert: opts.certPem,
      key: opts.keyPem,
      // Pinned: Node cannot verify a chain to a CA it was not given; checkPinnedServer does after the handshake.
      ...(pinnedOnly ? { rejectUnauthorized: false } : { ca: opts.caPem, rejectUnauthorized: true }),
    });
    socket.setTimeout(opts.timeoutMs ?? 15_000, () =>
      socket.destroy(
        Object.assign(new Error(`TLS handshake with ${target} timed out`), { code: HANDSHAKE_TIMEOUT_ERRNO }),
      ),
    );
    const onError = (err: Error): void => {
      const e = toNetError(err, target);
      reject(e instanceof Error ? e : err);
    };
    socket.once("error", onError);
    socket.once("secureConnect", () => {
      socket.setTimeout(0);
      socket.removeListener("error", onError);
      let refused: LifeboatError | undefined;
      try {
        refused =
          pin !== undefined && pinnedOnly
            ? checkPinnedServer(socket, opts.servername ?? opts.host, target, pin, clock.now())
            : undefined;
      } catch (err) {
        refused = new LifeboatError("NET_TLS_FAILED", `cannot read the certificates ${target} sent`, {
          cause: err,
        });
      }
      if (!refused && socket.alpnProtocol !== WIRE_ALPN) {
        refused = new LifeboatError(
          "WIRE_NOT_OFFERED",
          `${target} does not speak the wire protocol ${WIRE_ALPN}`,
          {
            hint: "The endpoint is an older Lifeboat server or something that ends TLS in front of it; point the agent at the server itself (load balancers must pass TCP through).",
          },
        );
      }
      if (refused) {
        socket.destroy();
        reject(refused);
        return;
      }
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}
