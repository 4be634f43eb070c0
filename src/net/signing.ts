import { X509Certificate as NodeX509Certificate, sign, verify } from "node:crypto";
import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import type { CaCredentials } from "./ca.js";
import { signLeaf } from "./issue.js";
import { generateP256KeyPair, privateKeyToPem } from "./keys.js";
import { DAY_MS, validityWindow } from "./validity.js";
import { toPem, x509 } from "./x509.js";

/** Five years: bundles are rebuilt for every release, far more often. */
export const SIGNING_CERT_VALIDITY_DAYS = 1825;

/**
 * Issues the release-signing certificate (keyUsage digitalSignature, EKU
 * codeSigning) with its own new P-256 key. Agent bundles are signed with the
 * key; agents verify against the CA they already pin.
 */
export async function issueSigningCert(
  ca: CaCredentials,
  opts: { commonName?: string; validityDays?: number; clock?: Clock } = {},
): Promise<{ certPem: string; keyPem: string }> {
  const validityDays = opts.validityDays ?? SIGNING_CERT_VALIDITY_DAYS;
  if (!(validityDays > 0)) {
    throw new LifeboatError("NET_CERT_PARAMS_INVALID", `validity of ${validityDays} days is not positive`);
  }
  const keys = await generateP256KeyPair();
  const cert = await signLeaf(ca, {
    commonName: opts.commonName ?? "Lifeboat release signing",
    publicKey: keys.publicKey,
    ...validityWindow(opts.clock ?? systemClock, validityDays * DAY_MS),
    keyUsage: x509.KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [x509.ExtendedKeyUsage.codeSigning],
  });
  return { certPem: toPem(cert), keyPem: await privateKeyToPem(keys.privateKey) };
}

/** ECDSA-SHA256 signature (DER, then base64) of `data` with a PEM private key. */
export function signDetached(keyPem: string, data: Uint8Array | string): string {
  return sign("sha256", typeof data === "string" ? Buffer.from(data) : data, keyPem).toString("base64");
}

/**
 * True only when all of these hold: `certPem` was signed by the CA in `caPem`
 * (itself a CA), it is a code-signing certificate (EKU codeSigning, keyUsage
 * digitalSignature, not a CA), it is valid at `clock.now()`, and `signature`
 * is its key's signature of `data`. Anything unreadable is simply false: a
 * verifier has nothing to repair, only to refuse.
 */
export function verifyDetached(
  certPem: string,
  caPem: string,
  data: Uint8Array | string,
  signature: string,
  opts: { clock?: Clock } = {},
): boolean {
  try {
    const ca = new NodeX509Certificate(caPem);
    const cert = new NodeX509Certificate(certPem);
    if (!ca.ca || cert.ca || !cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
    if (!isCodeSigningCert(new x509.X509Certificate(cert.raw), (opts.clock ?? systemClock).now()))
      return false;
    const sig = Buffer.from(signature, "base64");
    if (sig.length === 0) return false;
    return verify("sha256", typeof data === "string" ? Buffer.from(data) : data, cert.publicKey, sig);
  } catch {
    return false;
  }
}

function isCodeSigningCert(cert: x509.X509Certificate, now: number): boolean {
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  return (
    ku !== null &&
    (ku.usages & x509.KeyUsageFlags.digitalSignature) !== 0 &&
    eku !== null &&
    eku.usages.includes(x509.ExtendedKeyUsage.codeSigning) &&
    cert.notBefore.getTime() <= now &&
    now <= cert.notAfter.getTime()
  );
}
