import { promises as fs } from "node:fs";

/** mulberry32: a small, fast PRNG of 32-bit unsigned integers. */
export function prngU32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** The same generator as numbers in [0, 1). Tests that draw random data print the seed and replay from it. */
export function prng(seed: number): () => number {
  const next = prngU32(seed);
  return () => next() / 4294967296;
}

/** Two numbers mixed into one seed. */
export const mix = (a: number, b: number) =>
  (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) + Math.imul(b, 0xc2b2ae35)) >>> 0;

/** LIFEBOAT_SEED when set (an integer), else a fresh random seed. */
export function seedFromEnv(): number {
  const raw = process.env.LIFEBOAT_SEED;
  if (raw === undefined || raw === "") return Math.floor(Math.random() * 2 ** 31);
  const seed = Number(raw);
  if (!Number.isSafeInteger(seed)) throw new Error(`LIFEBOAT_SEED must be an integer, got ${raw}`);
  return seed;
}

export function randomBuffer(rand: () => number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i + 4 <= length; i += 4) b.writeUInt32LE(Math.floor(rand() * 4294967296), i);
  for (let i = length - (length % 4); i < length; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

/**
 * Writes a disk image of `size` bytes in stripes of `stripe` bytes that are,
 * in turn, random (incompressible), text (compressible) and zero.
 */
export async function writeMixedImage(
  file: string,
  size: number,
  seed: number,
  stripe = 4 << 20,
): Promise<void> {
  const rand = prng(seed);
  const text = Buffer.from(
    `seed ${seed}: the quick brown fox writes a log line\n`.repeat(Math.ceil(stripe / 40)),
  ).subarray(0, stripe);
  const fh = await fs.open(file, "w");
  try {
    for (let off = 0, i = 0; off < size; off += stripe, i++) {
      const n = Math.min(stripe, size - off);
      const kind = i % 3;
      if (kind === 0) await fh.write(randomBuffer(rand, n), 0, n, off);
      else if (kind === 1) await fh.write(text, 0, n, off);
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}
