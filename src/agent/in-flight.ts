/**
 * Which parts of a disk have writes queued and not yet completed.
 *
 * The trace reports a write when its bio is queued (block_bio_queue), well
 * before the device has it: a read of the range meanwhile returns the old
 * bytes. Under an fsync-heavy load a write can stay queued for seconds. So
 * the agent also traces request completions (block_rq_complete) and reads a
 * range only when nothing queued on it is still in flight.
 *
 * Bios are merged into requests and split across them, so the two events do
 * not pair one to one; sectors do. Each 4 KiB page of the disk keeps a
 * signed count of sectors queued minus sectors completed. Per-CPU trace
 * buffers deliver events out of order, a completion possibly before its
 * queueing; counting commutes, and a page is in flight only while its count
 * is above zero.
 *
 * A device that never reports completions (a bio-based one, such as a
 * device-mapper volume) would keep its pages in flight for ever; pages in
 * flight longer than `staleMs` are taken as complete, and `staleSeen` says
 * that it happened.
 */
const PAGE_SECTORS = 8;

export class InFlight {
  private readonly counts = new Map<number, number>();
  /** When each page with a positive count became positive. */
  private readonly since = new Map<number, number>();
  staleSeen = 0;

  constructor(private readonly staleMs = 30_000) {}

  queued(sector: number, sectors: number, now: number): void {
    this.apply(sector, sectors, 1, now);
  }

  completed(sector: number, sectors: number, now: number): void {
    this.apply(sector, sectors, -1, now);
  }

  /** Pages with writes in flight. */
  get size(): number {
    return this.since.size;
  }

  /** True when a write queued on any byte of [offset, offset + length) has not completed. */
  overlaps(offset: number, length: number, now: number): boolean {
    if (this.since.size === 0) return false;
    const first = Math.floor(offset / 4096);
    const last = Math.floor((offset + length - 1) / 4096);
    if (last - first > this.since.size) {
      for (const [page, at] of this.since)
        if (page >= first && page <= last && !this.stale(page, at, now)) return true;
      return false;
    }
    for (let p = first; p <= last; p++) {
      const at = this.since.get(p);
      if (at !== undefined && !this.stale(p, at, now)) return true;
    }
    return false;
  }

  /** Forgets everything (after a rescan, nothing earlier matters). */
  clear(): void {
    this.counts.clear();
    this.since.clear();
  }

  private stale(page: number, at: number, now: number): boolean {
    if (now - at <= this.staleMs) return false;
    this.counts.delete(page);
    this.since.delete(page);
    this.staleSeen++;
    return true;
  }

  private apply(sector: number, sectors: number, sign: 1 | -1, now: number): void {
    const end = sector + sectors;
    for (let s = sector; s < end;) {
      const page = Math.floor(s / PAGE_SECTORS);
      const next = Math.min(end, (page + 1) * PAGE_SECTORS);
      const n = (this.counts.get(page) ?? 0) + sign * (next - s);
      if (n === 0) {
        this.counts.delete(page);
        this.since.delete(page);
      } else {
        this.counts.set(page, n);
        if (n > 0) {
          if (!this.since.has(page)) this.since.set(page, now);
        } else this.since.delete(page);
      }
      s = next;
    }
  }
}
