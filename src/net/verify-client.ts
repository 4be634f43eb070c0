import { X509Certificate as NodeX509Certificate } from "node:crypto";
import type { TLSSocket } from "node:tls";
import { type Clock, LifeboatError } from "../base/index.js";
import { type ClientIdentity, clientIdentity } from "./identity.js";

/** A client-certificate refusal, with the HTTP status a route should answer with. */
export type ClientCertError = LifeboatError & { statusCode: 401 | 403 };

/** OpenSSL's verdicts about time only; whether the time is right is the Clock's to say. */
const TIME_ERRORS = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID"]);

/** Per connection: whether the certificate chains to the CA, decided once per socket and CA. */
const trustCache = new WeakMap<TLSSocket, { caPem: string; identity: ClientIdentity | undefined }>();

/**
 * Decides whether the client certificate on a connection to a listener built
 * with serverTlsOptions() identifies an agent or a replicator that may act now.
 * Returns its identity, or throws a ClientCertError (statusCode in brackets):
 *  - NET_CLIENT_CERT_REQUIRED (401): no certificate was sent;
 *  - NET_CLIENT_CERT_UNTRUSTED (401): not issued by this CA (another site's,
 *    self-made), not a client certificate, or no Lifeboat identity in it;
 *  - NET_CLIENT_CERT_EXPIRED (401): outside its validity at `clock.now()`;
 *  - NET_CLIENT_CERT_REVOKED (403): `isRevoked(serial)` said so.
 *
 * Trust is checked here, not only read from `socket.authorized`: OpenSSL
 * reports one error of several (an expired certificate from another CA may
 * come back as "expired"), so the leaf's signature is verified against `caPem`
 * and OpenSSL's verdict is required too unless it is about time alone. Time is
 * judged by the clock; revocation is asked on every call (lists change while
 * a connection stays open).
 */
export async function verifyClientCertificate(
  socket: TLSSocket,
  opts: { caPem: string; isRevoked(serial: string): boolean | Promise<boolean>; clock: Clock },
): Promise<ClientIdentity> {
  const identity = trustedIdentity(socket, opts.caPem);
  const now = opts.clock.now();
  if (now > identity.notAfter.getTime() || now < identity.notBefore.getTime()) {
    const when =
      now > identity.notAfter.getTime()
        ? `expired ${identity.notAfter.toISOString()}`
        : `is not valid before ${identity.notBefore.toISOString()}`;
    throw refusal(
      new LifeboatError(
        "NET_CLIENT_CERT_EXPIRED",
        `the client certificate of ${describe(identity)} ${when}`,
        {
          hint: "Restart the agent or replicator so it renews its certificate; if it was offline too long, register it again with a new install token. Check that its clock is right.",
        },
      ),
      401,
    );
  }
  if (await opts.isRevoked(identity.serial)) {
    throw refusal(
      new LifeboatError(
        "NET_CLIENT_CERT_REVOKED",
        `the client certificate of ${describe(identity)} (serial ${identity.serial}) is revoked`,
        {
          hint: "This agent or replicator was removed or re-registered. To bring it back, register it again with a new install token.",
        },
      ),
      403,
    );
  }
  return identity;
}

function trustedIdentity(socket: TLSSocket, caPem: string): ClientIdentity {
  // A TLS 1.3 connection's peer certificate never changes (no renegotiation), so a trusted
  // identity found once holds for the socket; getPeerCertificate() builds a new object per call.
  const known = trustCache.get(socket);
  if (known?.caPem === caPem && known.identity) return known.identity;
  const peer = socket.getPeerCertificate();
  if (!peer?.raw || peer.raw.length === 0) {
    throw refusal(
      new LifeboatError(
        "NET_CLIENT_CERT_REQUIRED",
        "this request needs a client certificate and none was sent",
        {
          hint: "Agents and replicators present the certificate they received at registration; register this one first (lifeboat agent install).",
        },
      ),
      401,
    );
  }
  let cached = trustCache.get(socket);
  if (cached?.caPem !== caPem) {
    cached = { caPem, identity: chainsToCa(socket, peer.raw, caPem) ? clientIdentity(peer) : undefined };
    trustCache.set(socket, cached);
  }
  if (!cached.identity) {
    throw refusal(
      new LifeboatError(
        "NET_CLIENT_CERT_UNTRUSTED",
        `the client certificate "${String(peer.subject?.CN ?? "?")}" (issuer "${String(peer.issuer?.CN ?? "?")}") is not a Lifeboat client certificate from this server's CA`,
        {
          hint: "The agent or replicator holds a certificate from another CA (another installation, or a server initialized again). Register it again with an install token from this server.",
        },
      ),
      401,
    );
  }
  return cached.identity;
}

function chainsToCa(socket: TLSSocket, leafDer: Buffer, caPem: string): boolean {
  if (!socket.authorized && !TIME_ERRORS.has(String(socket.authorizationError))) return false;
  try {
    const ca = new NodeX509Certificate(caPem);
    const leaf = new NodeX509Certificate(leafDer);
    return ca.ca && !leaf.ca && leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
  } catch {
    return false;
  }
}

function describe(identity: ClientIdentity): string {
  return `${identity.role} ${identity.subjectId}`;
}

function refusal(err: LifeboatError, statusCode: 401 | 403): ClientCertError {
  return Object.assign(err, { statusCode });
}
