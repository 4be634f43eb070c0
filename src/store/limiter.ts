/** Runs at most `max` tasks at once. */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}

  /** Resolves when a task could start now (for producers that must not run ahead). */
  async waitForSlot(): Promise<void> {
    while (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    while (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}
