/** Runs at most `max` tasks at once. */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}

  /** Resolves when a task could start now (for producers that must not run ahead). */
  async waitForSlot(): Promise<void> {
    while (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
  }

  /** Takes a slot, waiting for one; the caller gives it back with `release` exactly once. */
  async acquire(): Promise<void> {
    await this.waitForSlot();
    this.active++;
  }

  release(): void {
    this.active--;
    this.waiting.shift()?.();
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await task();
    } finally {
      this.release();
    }
  }
}
