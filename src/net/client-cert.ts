import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import type { CaCredentials } from "./ca.js";
import { readVerifiedCsr } from "./csr.js";
import { CLIENT_ROLES, type ClientRole, SUBJECT_ID, identityCommonName, identityUrn } from "./identity.js";
import { signLeaf } from "./issue.js";
import { spkiFingerprint } from "./keys.js";
import { normalizeSerial } from "./serial.js";
import { HOUR_MS, validityWindow } from "./validity.js";
import { toPem, x509 } from "./x509.js";

export interface ClientCert {
  certPem: string;
  /** Lowercase hex; what clientIdentity() reports and what revocation lists hold. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 (lowercase hex) of the certified key's SubjectPublicKeyInfo DER; equals publicKeyFingerprintOfCsr(csr). */
  publicKeyFingerprint: string;
}

/** A week: agents renew well before, and a lost certificate stops working soon after revocation lists are lost too. */
export const CLIENT_CERT_VALIDITY_HOURS = 24 * 7;

/**
 * Issues a client certificate (EKU clientAuth) for the key in a CSR, after
 * checking the CSR's self-signature (NET_CSR_INVALID otherwise). The identity
 * is set by the caller, never taken from the CSR: subject CN `<role>:<subjectId>`
 * and SAN URI `urn:lifeboat:<role>:<subjectId>`.
 */
export async function issueClientCert(
  ca: CaCredentials,
  csrPem: string,
  opts: { role: ClientRole; subjectId: string; validityHours?: number; clock?: Clock },
): Promise<ClientCert> {
  if (!CLIENT_ROLES.includes(opts.role)) {
    throw new LifeboatError("NET_CERT_PARAMS_INVALID", `unknown client role "${String(opts.role)}"`);
  }
  if (!SUBJECT_ID.test(opts.subjectId)) {
    throw new LifeboatError(
      "NET_CERT_PARAMS_INVALID",
      `subject id "${opts.subjectId}" cannot go into a certificate: use 1 to 128 letters, digits, ".", "_" or "-"`,
    );
  }
  const validityHours = opts.validityHours ?? CLIENT_CERT_VALIDITY_HOURS;
  if (!(validityHours > 0)) {
    throw new LifeboatError("NET_CERT_PARAMS_INVALID", `validity of ${validityHours} hours is not positive`);
  }
  const csr = await readVerifiedCsr(csrPem);
  const cert = await signLeaf(ca, {
    commonName: identityCommonName(opts.role, opts.subjectId),
    publicKey: csr.publicKey,
    ...validityWindow(opts.clock ?? systemClock, validityHours * HOUR_MS),
    keyUsage: x509.KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [x509.ExtendedKeyUsage.clientAuth],
    subjectAltNames: [{ type: "url", value: identityUrn(opts.role, opts.subjectId) }],
  });
  return {
    certPem: toPem(cert),
    serial: normalizeSerial(cert.serialNumber),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    publicKeyFingerprint: spkiFingerprint(cert.publicKey.rawData),
  };
}
