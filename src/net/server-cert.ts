import { type Clock, LifeboatError, systemClock } from "../base/index.js";
import type { CaCredentials } from "./ca.js";
import { ipAddressForSan } from "./ip-address.js";
import { signLeaf } from "./issue.js";
import { generateP256KeyPair, privateKeyToPem } from "./keys.js";
import { normalizeSerial } from "./serial.js";
import { DAY_MS, validityWindow } from "./validity.js";
import { toPem, x509 } from "./x509.js";

export interface ServerCert {
  certPem: string;
  keyPem: string;
  /** Lowercase hex. */
  serial: string;
  notAfter: Date;
}

/** 825 days: the longest validity Apple platforms accept for a TLS server certificate, even from a private CA. */
export const SERVER_CERT_VALIDITY_DAYS = 825;

/** A DNS name as a certificate may carry it: labels of letters, digits and hyphens, or a leading `*.` wildcard. */
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/**
 * Issues a TLS server certificate for the control plane or a replicator, with
 * its own new P-256 key. Each host name that is an IPv4 or IPv6 address goes
 * into an iPAddress SAN, every other one into a dNSName SAN (lowercased);
 * the first one is also the subject CN. EKU serverAuth.
 */
export async function issueServerCert(
  ca: CaCredentials,
  opts: { hostnames: string[]; validityDays?: number; clock?: Clock },
): Promise<ServerCert> {
  const validityDays = opts.validityDays ?? SERVER_CERT_VALIDITY_DAYS;
  if (!(validityDays > 0)) {
    throw new LifeboatError("NET_CERT_PARAMS_INVALID", `validity of ${validityDays} days is not positive`);
  }
  const sans = opts.hostnames.map(hostnameToSan);
  if (sans.length === 0) {
    throw new LifeboatError("NET_CERT_PARAMS_INVALID", "a server certificate needs at least one host name", {
      hint: "Give every name and address agents and operators use to reach this server.",
    });
  }
  const keys = await generateP256KeyPair();
  const cert = await signLeaf(ca, {
    commonName: sans[0]!.value,
    publicKey: keys.publicKey,
    ...validityWindow(opts.clock ?? systemClock, validityDays * DAY_MS),
    keyUsage: x509.KeyUsageFlags.digitalSignature,
    extendedKeyUsage: [x509.ExtendedKeyUsage.serverAuth],
    subjectAltNames: sans,
  });
  return {
    certPem: toPem(cert),
    keyPem: await privateKeyToPem(keys.privateKey),
    serial: normalizeSerial(cert.serialNumber),
    notAfter: cert.notAfter,
  };
}

function hostnameToSan(hostname: string): x509.JsonGeneralName {
  const ip = ipAddressForSan(hostname);
  if (ip !== undefined) return { type: "ip", value: ip };
  const dns = hostname.toLowerCase().replace(/\.$/, "");
  if (!DNS_NAME.test(dns) || dns.length > 253) {
    throw new LifeboatError(
      "NET_CERT_PARAMS_INVALID",
      `"${hostname}" is neither an IP address nor a DNS name`,
      {
        hint: "Give host names such as lifeboat.example.net, or addresses such as 10.0.0.5 or fd00::5.",
      },
    );
  }
  return { type: "dns", value: dns };
}
