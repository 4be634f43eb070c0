import { X509Certificate as NodeX509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import { normalizeSerial } from "./serial.js";
import { x509 } from "./x509.js";

/** Who a client certificate speaks for: an agent (one source server) or a replicator. */
export type ClientRole = "agent" | "replicator";
export const CLIENT_ROLES: readonly ClientRole[] = ["agent", "replicator"];

export interface ClientIdentity {
  role: ClientRole;
  subjectId: string;
  /** Lowercase hex, as issueClientCert returned it. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

/** Ids that fit in a URN and a CN without escaping: letters, digits, `.`, `_`, `-`; at most 128. */
export const SUBJECT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function identityUrn(role: ClientRole, subjectId: string): string {
  return `urn:lifeboat:${role}:${subjectId}`;
}

export function identityCommonName(role: ClientRole, subjectId: string): string {
  return `${role}:${subjectId}`;
}

const URN = /^urn:lifeboat:(agent|replicator):([A-Za-z0-9][A-Za-z0-9._-]{0,127})$/;

/**
 * Reads the identity that issueClientCert put in a certificate: the SAN URI
 * `urn:lifeboat:<role>:<subjectId>`, which the subject CN must repeat, on a
 * certificate with EKU clientAuth that is not a CA. Returns undefined for any
 * other certificate, for no certificate (`{}`, what getPeerCertificate() gives
 * then) and for bytes that do not parse.
 *
 * This only parses: whether the certificate is trusted, current and not
 * revoked is verifyClientCertificate's business.
 */
export function clientIdentity(
  peer: PeerCertificate | NodeX509Certificate | string | undefined,
): ClientIdentity | undefined {
  let cert: x509.X509Certificate;
  try {
    if (peer === undefined) return undefined;
    if (typeof peer === "string") cert = new x509.X509Certificate(peer);
    else if (peer instanceof NodeX509Certificate) cert = new x509.X509Certificate(peer.raw);
    else if (peer.raw instanceof Uint8Array && peer.raw.length > 0) cert = new x509.X509Certificate(peer.raw);
    else return undefined;
  } catch {
    return undefined;
  }
  return identityOf(cert);
}

function identityOf(cert: x509.X509Certificate): ClientIdentity | undefined {
  if (cert.getExtension(x509.BasicConstraintsExtension)?.ca) return undefined;
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (!eku?.usages.includes(x509.ExtendedKeyUsage.clientAuth)) return undefined;
  const urns = (cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? [])
    .filter((n) => n.type === "url" && n.value.startsWith("urn:lifeboat:"))
    .map((n) => URN.exec(n.value));
  const m = urns.length === 1 ? urns[0] : undefined;
  if (!m) return undefined;
  const role = m[1] as ClientRole;
  const subjectId = m[2]!;
  const cns = cert.subjectName.getField("CN");
  if (cns.length !== 1 || cns[0] !== identityCommonName(role, subjectId)) return undefined;
  return {
    role,
    subjectId,
    serial: normalizeSerial(cert.serialNumber),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
  };
}
