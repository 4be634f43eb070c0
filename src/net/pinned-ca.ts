import { X509Certificate as NodeX509Certificate, createHash } from "node:crypto";
import { isIP } from "node:net";
import { type DetailedPeerCertificate, type TLSSocket, checkServerIdentity } from "node:tls";
import { LifeboatError } from "../base/index.js";
import { formatFingerprint, sameFingerprint } from "./fingerprint.js";
import { CA_FINGERPRINT_HINT, serverNameMismatch } from "./net-errors.js";
import { x509 } from "./x509.js";

/**
 * The check a client makes when the operator pinned only the SHA-256
 * fingerprint of the CA certificate (no CA file): the handshake ran without
 * chain verification, and this decides afterwards whether to use the socket.
 *
 * It holds when the chain the server sent contains a certificate with the
 * pinned fingerprint that is a CA, that CA's key signed the leaf (the TLS
 * handshake itself proved the server holds the leaf's key), the leaf and the
 * CA are valid at `now`, the leaf is a TLS server certificate (EKU serverAuth:
 * an agent's client certificate from the same CA cannot pose as the server),
 * and the leaf names `host`. Returns the reason it does not hold, or undefined.
 *
 * Lifeboat's CA signs leaves directly (pathLen 0), so no intermediate is
 * looked for. Resumed sessions carry no chain to check: callers disable TLS
 * session reuse in this mode.
 */
export function checkPinnedServer(
  socket: TLSSocket,
  host: string,
  target: string,
  pin: string,
  now: number,
): LifeboatError | undefined {
  const peer = socket.getPeerCertificate(true);
  if (!peer?.raw || peer.raw.length === 0) {
    return new LifeboatError("NET_TLS_FAILED", `${target} sent no certificate`, {
      hint: "The endpoint is not a Lifeboat server; check the URL.",
    });
  }
  const presented = chainOf(peer);
  const pinned = presented.find((c) => sameFingerprint(sha256(c.raw), pin));
  if (!pinned) {
    const seen = presented.map(
      (c) => `"${c.subject.replace(/\n/g, ", ")}" ${formatFingerprint(sha256(c.raw))}`,
    );
    return new LifeboatError(
      "NET_CA_MISMATCH",
      `the server at ${target} presents no CA certificate with fingerprint ${formatFingerprint(pin)}; it presents ${seen.join("; ")}`,
      { hint: CA_FINGERPRINT_HINT },
    );
  }
  const leaf = new NodeX509Certificate(peer.raw);
  if (!pinned.ca || leaf.ca || !leaf.checkIssued(pinned) || !leaf.verify(pinned.publicKey)) {
    return new LifeboatError(
      "NET_CA_MISMATCH",
      `the certificate of ${target} ("${leaf.subject}") was not issued by the pinned CA ${formatFingerprint(pin)}`,
      { hint: CA_FINGERPRINT_HINT },
    );
  }
  const problem =
    validityProblem(leaf, "server certificate", now) ?? validityProblem(pinned, "CA certificate", now);
  if (problem) {
    return new LifeboatError("NET_TLS_FAILED", `the ${problem} of ${target}`, {
      hint: "Check this host's clock (and the server's); if the clocks are right, renew the server certificate on the server.",
    });
  }
  const eku = new x509.X509Certificate(leaf.raw).getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.includes(x509.ExtendedKeyUsage.serverAuth)) {
    return new LifeboatError(
      "NET_TLS_FAILED",
      `the certificate of ${target} is not a TLS server certificate`,
      {
        hint: "The endpoint presents a client or signing certificate; check that the URL points at the Lifeboat server.",
      },
    );
  }
  const bare = host.startsWith("[") ? host.slice(1, -1) : host;
  const nameError =
    isIP(bare) || bare.length > 0 ? checkServerIdentity(bare, peer) : new Error("no host name");
  if (nameError) return serverNameMismatch(target, nameError.message, nameError);
  return undefined;
}

/** The leaf's issuers as the server sent them, in order, without the leaf and without repeats. */
export function chainOf(peer: DetailedPeerCertificate): NodeX509Certificate[] {
  const out: NodeX509Certificate[] = [];
  const seen = new Set<string>([peer.fingerprint256]);
  for (
    let c = peer.issuerCertificate;
    c && !seen.has(c.fingerprint256) && out.length < 8;
    c = c.issuerCertificate
  ) {
    seen.add(c.fingerprint256);
    out.push(new NodeX509Certificate(c.raw));
  }
  return out;
}

function validityProblem(cert: NodeX509Certificate, what: string, now: number): string | undefined {
  const c = new x509.X509Certificate(cert.raw);
  if (now > c.notAfter.getTime()) return `${what} expired ${c.notAfter.toISOString()}`;
  if (now < c.notBefore.getTime()) return `${what} is not valid before ${c.notBefore.toISOString()}`;
  return undefined;
}

function sha256(der: Buffer): string {
  return createHash("sha256").update(der).digest("hex");
}
