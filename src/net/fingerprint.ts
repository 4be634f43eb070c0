import { X509Certificate, createHash } from "node:crypto";
import { LifeboatError } from "../base/index.js";

/**
 * SHA-256 of a certificate's DER as `openssl x509 -fingerprint -sha256`
 * prints it: uppercase hex pairs joined by colons. Reads the first
 * certificate of a PEM (a chain file gives its first certificate's).
 */
export function certFingerprint(pem: string | Uint8Array): string {
  let der: Buffer;
  try {
    der = new X509Certificate(pem).raw;
  } catch (err) {
    throw new LifeboatError("NET_CERT_INVALID", "not a PEM or DER X.509 certificate", {
      hint: "Give the certificate file itself (it starts with -----BEGIN CERTIFICATE-----).",
      cause: err,
    });
  }
  return formatFingerprint(createHash("sha256").update(der).digest("hex"));
}

/** Uppercase hex pairs joined by colons, from hex in any case with or without colons. */
export function formatFingerprint(hex: string): string {
  return (normalizeFingerprint(hex).match(/../g) ?? []).join(":").toUpperCase();
}

/**
 * Lowercase hex without colons or white space: the form fingerprints are
 * compared in. A pasted `sha256 Fingerprint=` prefix (openssl's output line) is dropped.
 */
export function normalizeFingerprint(text: string): string {
  return text
    .replace(/^\s*sha-?256\s+fingerprint\s*=/i, "")
    .replace(/[\s:]/g, "")
    .toLowerCase();
}

/** Checks that `text` is a SHA-256 fingerprint an operator typed; returns it normalized. */
export function parseFingerprint(text: string): string {
  const hex = normalizeFingerprint(text);
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new LifeboatError("NET_FINGERPRINT_INVALID", `"${text}" is not a SHA-256 fingerprint`, {
      hint: "Give the 64 hex digits `openssl x509 -noout -fingerprint -sha256 -in ca.pem` prints (colons optional).",
      exitCode: 2,
    });
  }
  return hex;
}

/** True when both name the same SHA-256 fingerprint, ignoring colons, white space and case. */
export function sameFingerprint(a: string, b: string): boolean {
  const x = normalizeFingerprint(a);
  return /^[0-9a-f]{64}$/.test(x) && x === normalizeFingerprint(b);
}
