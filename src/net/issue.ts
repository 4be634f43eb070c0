import type { webcrypto } from "node:crypto";
import { LifeboatError } from "../base/index.js";
import type { CaCredentials } from "./ca.js";
import { importSigningKey } from "./keys.js";
import { randomSerial } from "./serial.js";
import { ECDSA_SHA256, x509 } from "./x509.js";

/** What differs between the leaves Lifeboat issues (servers, clients, release signing). */
export interface LeafSpec {
  commonName: string;
  publicKey: webcrypto.CryptoKey | x509.PublicKey;
  notBefore: Date;
  notAfter: Date;
  keyUsage: x509.KeyUsageFlags;
  extendedKeyUsage: x509.ExtendedKeyUsage[];
  subjectAltNames?: x509.JsonGeneralNames;
}

/**
 * Signs a leaf with the CA: a random 16-byte serial, basicConstraints CA:false,
 * the key usages given (critical), subject and authority key identifiers.
 * A leaf never outlives its CA: notAfter is capped at the CA's notAfter.
 */
export async function signLeaf(ca: CaCredentials, spec: LeafSpec): Promise<x509.X509Certificate> {
  const caCert = readCaCertificate(ca.certPem);
  let signingKey;
  try {
    signingKey = await importSigningKey(ca.keyPem);
  } catch (err) {
    throw new LifeboatError(
      "NET_CA_INVALID",
      `the CA private key cannot be used: ${(err as Error).message}`,
      {
        hint: "Point the server at the key `lifeboat server init` wrote beside ca.pem (in keys/), unchanged.",
        cause: err,
      },
    );
  }
  const notAfter = spec.notAfter > caCert.notAfter ? caCert.notAfter : spec.notAfter;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(spec.keyUsage, true),
    new x509.ExtendedKeyUsageExtension(spec.extendedKeyUsage, false),
    await x509.SubjectKeyIdentifierExtension.create(spec.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(caCert),
  ];
  if (spec.subjectAltNames?.length) {
    extensions.push(new x509.SubjectAlternativeNameExtension(spec.subjectAltNames, false));
  }
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [spec.commonName] }],
    issuer: caCert.subjectName,
    notBefore: spec.notBefore,
    notAfter,
    publicKey: spec.publicKey,
    signingKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions,
  });
}

/** Parses the CA certificate, refusing anything that is not a CA. */
export function readCaCertificate(certPem: string): x509.X509Certificate {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch (err) {
    throw new LifeboatError("NET_CA_INVALID", "the CA certificate is not a PEM X.509 certificate", {
      hint: "Use ca.pem from the server's data directory, unchanged.",
      cause: err,
    });
  }
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw new LifeboatError("NET_CA_INVALID", `the certificate "${cert.subject}" is not a CA certificate`, {
      hint: "Use ca.pem from the server's data directory, not a server or client certificate.",
    });
  }
  return cert;
}
