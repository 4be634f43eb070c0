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

/**
 * Puts `item` among the spares, at most `max` of them: when full, the
 * smallest of the spares and `item` is left out and returned. Keeping the
 * large ones matters when requests vary in size: a pool that kept whichever
 * came back first filled up with small buffers that no large request could
 * use, and made a new buffer for each of those, to drop it again later (the
 * agent's frame pool made 149 new buffers, 340 MiB, in one replication
 * benchmark run).
 */
export function keepSpare<T extends { byteLength: number }>(spare: T[], item: T, max: number): T | undefined {
  if (spare.length < max) {
    spare.push(item);
    return undefined;
  }
  let smallest = 0;
  for (const [i, b] of spare.entries()) if (b.byteLength < spare[smallest]!.byteLength) smallest = i;
  if (max === 0 || spare[smallest]!.byteLength >= item.byteLength) return item;
  const dropped = spare[smallest]!;
  spare[smallest] = item;
  return dropped;
}

/**
 * Puts `item` among the spares, then leaves out spares until they hold at
 * most `maxBytes`: the smallest first, or with `largestFirst` the largest.
 * Returns those left out.
 */
export function keepSpareBytes<T extends { byteLength: number }>(
  spare: T[],
  item: T,
  maxBytes: number,
  largestFirst = false,
): T[] {
  spare.push(item);
  let bytes = spare.reduce((n, b) => n + b.byteLength, 0);
  const dropped: T[] = [];
  while (bytes > maxBytes) {
    let at = 0;
    for (const [i, b] of spare.entries()) {
      const size = spare[at]!.byteLength;
      if (largestFirst ? b.byteLength > size : b.byteLength < size) at = i;
    }
    const [out] = spare.splice(at, 1);
    bytes -= out!.byteLength;
    dropped.push(out!);
  }
  return dropped;
}

/**
 * Buffers lent out to be handed back later (from a worker thread, say),
 * kept for reuse: at most `max` spare (the largest), and never more given
 * back than were lent, so that buffers from elsewhere do not pile up.
 */
export class SpareBuffers {
  private readonly spare: ArrayBuffer[] = [];
  private lent = 0;

  constructor(private readonly max: number) {}

  /** A spare buffer of at least `min` bytes, or a new one of `size` bytes (at least `min`). */
  take(min: number, size = min): ArrayBuffer {
    const ab = takeSpare(this.spare, min) ?? Buffer.allocUnsafeSlow(Math.max(min, size)).buffer;
    this.lent++;
    return ab;
  }

  /** Keeps a buffer back, if one is still lent out. */
  giveBack(ab: ArrayBuffer): void {
    if (this.lent === 0) return;
    this.lent--;
    keepSpare(this.spare, ab, this.max);
  }
}
