/**
 * Takes the smallest buffer of at least `min` bytes out of `spare` (buffers
 * kept for reuse), or returns undefined when none is large enough. The
 * smallest that fits leaves the large ones to large requests.
 */
export function takeSpare<T extends { byteLength: number }>(spare: T[], min: number): T | undefined {
  let best = -1;
  for (const [i, b] of spare.entries())
    if (b.byteLength >= min && (best < 0 || b.byteLength < spare[best]!.byteLength)) best = i;
  return best < 0 ? undefined : spare.splice(best, 1)[0];
}
