import { createPrivateKey, createPublicKey, webcrypto } from "node:crypto";
import { LifeboatError } from "../base/index.js";
import { describeKey, generateP256KeyPair, privateKeyToPem, spkiFingerprint } from "./keys.js";
import { ECDSA_SHA256, toPem, x509 } from "./x509.js";

/**
 * The agent's (or replicator's) side of registration: a new P-256 key that
 * never leaves the host, and a certificate signing request for it. The CA
 * ignores the CSR's subject and extensions; it only takes the key from it,
 * after checking the CSR's signature proves the requester holds that key.
 */
export async function generateKeyAndCsr(opts: {
  commonName: string;
}): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await generateP256KeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [opts.commonName] }],
    keys,
    signingAlgorithm: ECDSA_SHA256,
  });
  return { keyPem: await privateKeyToPem(keys.privateKey), csrPem: toPem(csr) };
}

/**
 * A CSR for a key the caller already holds (PEM, PKCS#8 P-256): certificate
 * renewal keeps the key, so only the certificate file changes.
 */
export async function csrForKey(opts: { keyPem: string; commonName: string }): Promise<string> {
  const priv = createPrivateKey(opts.keyPem);
  const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
  const privateKey = await webcrypto.subtle.importKey(
    "pkcs8",
    priv.export({ type: "pkcs8", format: "der" }),
    alg,
    false,
    ["sign"],
  );
  const publicKey = await webcrypto.subtle.importKey(
    "spki",
    createPublicKey(priv).export({ type: "spki", format: "der" }),
    alg,
    true,
    ["verify"],
  );
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [opts.commonName] }],
    keys: { privateKey, publicKey },
    signingAlgorithm: ECDSA_SHA256,
  });
  return toPem(csr);
}

/**
 * Parses a CSR and checks its self-signature and key type (ECDSA P-256 only).
 * Throws NET_CSR_INVALID otherwise.
 */
export async function readVerifiedCsr(csrPem: string): Promise<x509.Pkcs10CertificateRequest> {
  const csr = parseCsr(csrPem);
  let valid = false;
  try {
    valid = await csr.verify();
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new LifeboatError(
      "NET_CSR_INVALID",
      "the certificate signing request's signature does not verify",
      {
        hint: "The request was altered or corrupted on its way; run the registration again.",
      },
    );
  }
  const key = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: "der", type: "spki" });
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new LifeboatError("NET_CSR_INVALID", `the request's key is ${describeKey(key)}, not ECDSA P-256`, {
      hint: "Register with a Lifeboat agent or replicator of this version; it makes a P-256 key.",
    });
  }
  return csr;
}

/**
 * SHA-256 (lowercase hex) of the CSR's public key (SubjectPublicKeyInfo DER):
 * equal to `publicKeyFingerprint` of the certificate issued for it, so a server
 * can make registration idempotent per key. Does not check the signature.
 */
export function publicKeyFingerprintOfCsr(csrPem: string): string {
  const csr = parseCsr(csrPem);
  try {
    return spkiFingerprint(csr.publicKey.rawData);
  } catch (err) {
    throw csrInvalid("its public key cannot be read", err);
  }
}

function parseCsr(csrPem: string): x509.Pkcs10CertificateRequest {
  if (typeof csrPem !== "string" || !csrPem.includes("-----BEGIN CERTIFICATE REQUEST-----")) {
    throw csrInvalid("it is not a PEM certificate signing request");
  }
  try {
    return new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw csrInvalid("it does not parse", err);
  }
}

function csrInvalid(why: string, cause?: unknown): LifeboatError {
  return new LifeboatError("NET_CSR_INVALID", `the certificate signing request is unusable: ${why}`, {
    hint: "Send the PEM the agent generated, unchanged (-----BEGIN CERTIFICATE REQUEST-----).",
    cause,
  });
}
