/**
 * The one place that loads @peculiar/x509. It needs reflect-metadata loaded
 * before it (its ASN.1 schemas are declared with decorators), and it is told
 * to use Node's own WebCrypto rather than whatever `globalThis.crypto` holds.
 * Every other file in net/ imports x509 from here, never from the package.
 */
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto);

export { x509 };

/** ECDSA over P-256 with SHA-256: the only algorithm Lifeboat issues or accepts. */
export const P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
export const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

/** PEM text of a certificate or CSR, ending in a newline as PEM files do (so chains concatenate). */
export function toPem(obj: x509.X509Certificate | x509.Pkcs10CertificateRequest): string {
  return `${obj.toString("pem").trimEnd()}\n`;
}
