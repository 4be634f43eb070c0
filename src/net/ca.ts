import { randomBytes } from "node:crypto";
import { type Clock, systemClock } from "../base/index.js";
import { generateP256KeyPair, privateKeyToPem } from "./keys.js";
import { randomSerial } from "./serial.js";
import { DAY_MS, HOUR_MS } from "./validity.js";
import { ECDSA_SHA256, toPem, x509 } from "./x509.js";

/** A CA certificate and its private key, both PEM. The key never leaves the control plane. */
export interface CaCredentials {
  certPem: string;
  keyPem: string;
}

export const CA_VALIDITY_DAYS = 3650;

/**
 * Creates Lifeboat's private CA: a self-signed ECDSA P-256 certificate with
 * basicConstraints CA:true, pathLen 0 (it signs leaves only, never another
 * CA) and keyUsage keyCertSign + cRLSign, valid ten years.
 *
 * The default common name carries a few random hex digits so that two sites'
 * CAs are told apart at a glance in `openssl x509 -subject` output.
 */
export async function createCa(opts: { commonName?: string; clock?: Clock } = {}): Promise<CaCredentials> {
  const clock = opts.clock ?? systemClock;
  const commonName = opts.commonName ?? `Lifeboat CA ${randomBytes(3).toString("hex")}`;
  const keys = await generateP256KeyPair();
  const now = clock.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [commonName] }],
    // An hour back: a CA made on a host whose clock runs ahead still works elsewhere at once.
    notBefore: new Date(Math.floor((now - HOUR_MS) / 1000) * 1000),
    notAfter: new Date(Math.floor((now + CA_VALIDITY_DAYS * DAY_MS) / 1000) * 1000),
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: toPem(cert), keyPem: await privateKeyToPem(keys.privateKey) };
}
