import { LifeboatError } from "../../base/index.js";

/** PATH_MAX: a longer name in a cpio header is damage, not a name. */
const MAX_NAME = 4096;
const HEADER = 110;

export interface CpioEntry {
  name: string;
  mode: number;
  size: number;
}

/**
 * A streaming reader of cpio "newc" (070701) and "crc" (070702) archives, as
 * the kernel unpacks an initramfs: archives may follow one another, each
 * ending with TRAILER!!!, with zero padding between them. File data is skipped
 * unless `capture` asks for it (and then only up to `captureMax` bytes), so the
 * memory used does not grow with the archive.
 *
 * After a trailer, the first byte that is neither zero nor the start of
 * another archive stops the scanner: `stoppedAt` is its offset in the input
 * (an uncompressed early archive followed by a compressed one).
 */
export class CpioScanner {
  private buf: Buffer = Buffer.alloc(0);
  /** Offset in the input of buf[0]. */
  private base = 0;
  private skip = 0;
  private capturing: { name: string; size: number; parts: Buffer[]; got: number } | null = null;
  private afterTrailer = false;
  private archives = 0;
  entries = 0;
  stoppedAt: number | null = null;

  constructor(
    private readonly onEntry: (e: CpioEntry) => void,
    private readonly capture: (name: string, size: number) => boolean = () => false,
    private readonly onCapture: (name: string, data: Buffer) => void = () => undefined,
  ) {}

  get done(): boolean {
    return this.stoppedAt !== null;
  }

  /** True when the input so far ended cleanly (after a trailer, between archives). */
  get complete(): boolean {
    return this.stoppedAt !== null || (this.afterTrailer && this.skip === 0 && this.capturing === null);
  }

  get archiveCount(): number {
    return this.archives;
  }

  push(chunk: Buffer): void {
    if (this.done) return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let pos = 0;
    for (;;) {
      if (this.capturing) {
        const c = this.capturing;
        const n = Math.min(c.size - c.got, this.buf.length - pos);
        c.parts.push(Buffer.from(this.buf.subarray(pos, pos + n)));
        c.got += n;
        pos += n;
        if (c.got < c.size) break;
        this.onCapture(c.name, Buffer.concat(c.parts));
        this.capturing = null;
        continue;
      }
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buf.length - pos);
        this.skip -= n;
        pos += n;
        if (this.skip > 0) break;
        continue;
      }
      if (this.afterTrailer) {
        while (pos < this.buf.length && this.buf[pos] === 0) pos++;
        if (pos >= this.buf.length) break;
        if (this.buf[pos] !== 0x30) {
          this.stoppedAt = this.base + pos;
          break;
        }
      }
      if (this.buf.length - pos < HEADER) break;
      const h = this.header(this.buf, pos);
      const nameEnd = pad4(HEADER + h.namesize);
      if (this.buf.length - pos < nameEnd) break;
      const name = this.buf.toString("utf8", pos + HEADER, pos + HEADER + h.namesize - 1);
      pos += nameEnd;
      if (this.afterTrailer) this.afterTrailer = false;
      if (name === "TRAILER!!!") {
        this.archives++;
        this.afterTrailer = true;
        continue;
      }
      this.entries++;
      this.onEntry({ name, mode: h.mode, size: h.filesize });
      const padded = pad4(h.filesize);
      if ((h.mode & 0o170000) === 0o100000 && this.capture(name, h.filesize)) {
        this.capturing = { name, size: h.filesize, parts: [], got: 0 };
        this.skip = padded - h.filesize;
      } else this.skip = padded;
    }
    this.base += pos;
    this.buf = this.buf.subarray(pos);
  }

  /** Call at the end of the input: throws unless it ended between archives. */
  finish(): void {
    if (this.complete) return;
    if (this.archives === 0 && this.entries === 0 && this.buf.length === 0 && this.skip === 0)
      throw corrupt("the archive is empty");
    throw corrupt("the archive ends inside an entry, before its TRAILER!!!");
  }

  private header(b: Buffer, o: number): { mode: number; filesize: number; namesize: number } {
    const magic = b.toString("latin1", o, o + 6);
    if (magic !== "070701" && magic !== "070702")
      throw corrupt(`no cpio header at byte ${this.base + o} (found ${JSON.stringify(magic)})`);
    const field = (i: number): number => {
      const s = b.toString("latin1", o + 6 + i * 8, o + 14 + i * 8);
      if (!/^[0-9A-Fa-f]{8}$/.test(s)) throw corrupt(`bad cpio header field at byte ${this.base + o}`);
      return parseInt(s, 16);
    };
    const namesize = field(11);
    if (namesize < 1 || namesize > MAX_NAME)
      throw corrupt(`cpio name of ${namesize} bytes at byte ${this.base + o}`);
    return { mode: field(1), filesize: field(6), namesize };
  }
}

const pad4 = (n: number) => (n + 3) & ~3;

export function corrupt(why: string): LifeboatError {
  return new LifeboatError("LAUNCH_INITRAMFS_CORRUPT", `corrupt initramfs: ${why}`, {
    hint: "regenerate the initramfs on the source server (update-initramfs -u, or dracut -f)",
  });
}
