import type { Clock } from "../base/index.js";

export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;

/**
 * How far before "now" a leaf certificate's validity starts, so that a peer
 * whose clock runs a little behind the issuer's accepts it at once.
 */
export const BACKDATE_MS = 5 * 60_000;

/** The validity window of a certificate issued now for `lengthMs`. */
export function validityWindow(clock: Clock, lengthMs: number): { notBefore: Date; notAfter: Date } {
  const now = clock.now();
  // X.509 times have whole seconds; rounding here makes notAfter what the certificate will say.
  const second = (ms: number): Date => new Date(Math.floor(ms / 1000) * 1000);
  return { notBefore: second(now - BACKDATE_MS), notAfter: second(now + lengthMs) };
}
