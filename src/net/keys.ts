/**
 * P-256 key pairs: made with WebCrypto (what @peculiar/x509 signs with),
 * stored as PKCS#8 PEM ("BEGIN PRIVATE KEY"), which openssl and Node's tls
 * read as they are.
 */
import { createHash, createPrivateKey, createPublicKey, webcrypto, type KeyObject } from "node:crypto";
import { P256 } from "./x509.js";

type CryptoKeyPair = webcrypto.CryptoKeyPair;
type CryptoKey = webcrypto.CryptoKey;

/** A new extractable P-256 key pair for signing (ECDSA). */
export async function generateP256KeyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(P256, true, ["sign", "verify"]);
}

export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  return createPrivateKey({
    key: Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key)),
    format: "der",
    type: "pkcs8",
  }).export({ type: "pkcs8", format: "pem" }) as string;
}

/**
 * Imports a PEM private key (PKCS#8, or the SEC1 "EC PRIVATE KEY" openssl
 * writes) as a WebCrypto signing key. Throws when it is not a P-256 key.
 */
export async function importSigningKey(pem: string): Promise<CryptoKey> {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new Error(`expected an ECDSA P-256 private key, got ${describeKey(key)}`);
  }
  const der = key.export({ type: "pkcs8", format: "der" });
  return webcrypto.subtle.importKey("pkcs8", der, P256, false, ["sign"]);
}

export function describeKey(key: KeyObject): string {
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return `${key.asymmetricKeyType ?? "unknown"}${curve ? ` (${curve})` : ""}`;
}

/**
 * SHA-256 of a public key's SubjectPublicKeyInfo DER, lowercase hex. The key is
 * re-encoded by Node first, so the same key gives the same fingerprint whether
 * it is read from a CSR or from the certificate issued for it.
 */
export function spkiFingerprint(spkiDer: Uint8Array | ArrayBuffer): string {
  const bytes = spkiDer instanceof ArrayBuffer ? Buffer.from(spkiDer) : Buffer.from(spkiDer);
  const der = createPublicKey({ key: bytes, format: "der", type: "spki" }).export({
    type: "spki",
    format: "der",
  });
  return createHash("sha256").update(der).digest("hex");
}
