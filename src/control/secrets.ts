import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Secrets the control plane hands out once and stores only hashed: API keys
 * and install tokens. Both read `<id>.<secret>`: the id is public (listings,
 * audit records), the secret is 256 random bits (base64url), so a plain
 * SHA-256 of it is enough: nothing to brute-force.
 */
export interface IssuedSecret {
  id: string;
  /** `<id>.<secret>`: shown once, never stored. */
  value: string;
  hash: string;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(9).toString("base64url").replace(/[-_]/g, "x")}`;
}

export function issueSecret(prefix: string): IssuedSecret {
  const id = newId(prefix);
  const secret = randomBytes(32).toString("base64url");
  return { id, value: `${id}.${secret}`, hash: hashSecret(secret) };
}

/** Splits `<id>.<secret>`; undefined when it does not have that shape. */
export function splitSecret(value: string): { id: string; secret: string } | undefined {
  const m = /^([A-Za-z0-9_]{1,64})\.([A-Za-z0-9_-]{16,128})$/.exec(value.trim());
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && timingSafeEqual(x, y);
}
