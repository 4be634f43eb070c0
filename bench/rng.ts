/**
 * Seeded randomness so the benchmark image is the same from run to run.
 * Small choices (sizes, offsets, words) come from sfc32; bulk bytes come from
 * an AES-256-CTR keystream keyed by the seed, which is deterministic, fast
 * (hundreds of MB/s) and as incompressible as /dev/urandom.
 */
import { createCipheriv, createHash, type Cipher } from "node:crypto";

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  private readonly stream: Cipher;

  constructor(private readonly seed: string) {
    const h = createHash("sha256").update(seed).digest();
    this.a = h.readUInt32LE(0);
    this.b = h.readUInt32LE(4);
    this.c = h.readUInt32LE(8);
    this.d = h.readUInt32LE(12) | 1;
    const key = createHash("sha256").update(`bytes:${seed}`).digest();
    this.stream = createCipheriv("aes-256-ctr", key, Buffer.alloc(16));
    for (let i = 0; i < 12; i++) this.next(); // sfc32 needs a few rounds to mix the seed
  }

  /** Next uint32 (sfc32). */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.next() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** Uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.int(items.length)];
    if (item === undefined) throw new Error("pick from an empty list");
    return item;
  }

  /** `n` pseudo-random bytes from the seeded keystream. */
  bytes(n: number): Buffer {
    return this.stream.update(Buffer.alloc(n));
  }

  /**
   * A child generator with its own sequence, derived from the seed and the
   * label only, so adding a draw elsewhere does not shift every later file.
   */
  fork(label: string): Rng {
    return new Rng(`${this.seed}/${label}`);
  }
}
