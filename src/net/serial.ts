import { randomBytes } from "node:crypto";

/**
 * A random 16-byte certificate serial, as lowercase hex. The first byte is
 * kept in 0x40..0x7f so the DER INTEGER is positive and exactly 16 bytes
 * (no leading zero to strip or add): the hex printed here is the hex that
 * openssl, Node's tls and @peculiar/x509 all print for it, ignoring case.
 */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString("hex");
}

/** Serial numbers compare as lowercase hex without leading zeros or colons. */
export function normalizeSerial(serial: string): string {
  return serial
    .replace(/:/g, "")
    .toLowerCase()
    .replace(/^0+(?=.)/, "");
}
