/**
 * The agent's cap on what it sends (replication settings, Mbit/s; 0: none):
 * a token bucket that holds at most one second's worth of credit. A new cap
 * takes effect at once, also for a send waiting under the old one.
 */
import type { Clock } from "../base/index.js";

export class BandwidthCap {
  private bucket = { bytesPerSecond: 0, available: 0, at: 0 };

  constructor(
    private readonly clock: Clock,
    mbps: number,
  ) {
    this.set(mbps);
  }

  /** Sets the cap in Mbit/s (0: no cap). */
  set(mbps: number): void {
    this.bucket = {
      bytesPerSecond: mbps > 0 ? (mbps * 1_000_000) / 8 : 0,
      available: 0,
      at: this.clock.now(),
    };
  }

  /** The cap in bytes per second (0: none). */
  get bytesPerSecond(): number {
    return this.bucket.bytesPerSecond;
  }

  /** Waits until `bytes` may be sent under the cap, and counts them. */
  async take(bytes: number): Promise<void> {
    for (;;) {
      const b = this.bucket;
      if (b.bytesPerSecond === 0) return;
      const now = this.clock.now();
      b.available = Math.min(b.bytesPerSecond, b.available + ((now - b.at) / 1000) * b.bytesPerSecond);
      b.at = now;
      if (b.available >= bytes || b.available >= b.bytesPerSecond) {
        b.available -= bytes;
        return;
      }
      // In short steps: a cap raised or removed meanwhile (set) applies at once.
      await this.clock.sleep(Math.min(250, Math.ceil(((bytes - b.available) / b.bytesPerSecond) * 1000)));
    }
  }
}
