/**
 * Splits a byte stream (a command's output, a serial console) into lines an
 * operator can read, with bounds: a line longer than `maxLineBytes` is cut,
 * and after `maxTotalBytes` lines are no longer passed on (one notice says
 * so), though the last few are always kept for the outcome's message. A
 * guest or a script that prints without end must not fill the job's log.
 */
export interface LineSinkOptions {
  maxLineBytes: number;
  maxTotalBytes: number;
  /** How many of the latest lines `lastLines()` returns. */
  keepLast: number;
  onLine(line: string): void;
  /** Called once, when the total bound is passed. */
  onLimit?(): void;
}

export class LineSink {
  private partial: Buffer[] = [];
  private partialLen = 0;
  /** The current line was cut: drop its bytes until the next newline. */
  private cutting = false;
  private total = 0;
  private limited = false;
  private readonly last: string[] = [];
  /** Lines not passed on because of the total bound. */
  suppressed = 0;

  constructor(private readonly opts: LineSinkOptions) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      this.append(chunk.subarray(start, end));
      if (nl < 0) return;
      this.flushLine();
      start = nl + 1;
    }
  }

  /** Passes on a last line without its newline, if any. */
  end(): void {
    if (this.partialLen > 0 || this.cutting) this.flushLine();
  }

  /** The line being received (no newline yet), cleaned: a login prompt ends without one. */
  pending(): string {
    return this.cutting ? "" : cleanLine(Buffer.concat(this.partial).toString("utf8"));
  }

  lastLines(): string[] {
    return [...this.last];
  }

  private append(bytes: Buffer): void {
    if (this.cutting || bytes.length === 0) return;
    const room = this.opts.maxLineBytes - this.partialLen;
    if (bytes.length > room) {
      this.partial.push(Buffer.from(bytes.subarray(0, room)));
      this.partialLen += room;
      this.cutting = true;
      return;
    }
    this.partial.push(Buffer.from(bytes)); // a copy: callers reuse their buffers
    this.partialLen += bytes.length;
  }

  private flushLine(): void {
    const line =
      cleanLine(Buffer.concat(this.partial).toString("utf8")) + (this.cutting ? " [line cut]" : "");
    this.partial = [];
    this.partialLen = 0;
    this.cutting = false;
    this.last.push(line);
    if (this.last.length > this.opts.keepLast) this.last.shift();
    this.total += line.length + 1;
    if (this.total <= this.opts.maxTotalBytes) {
      this.opts.onLine(line);
      return;
    }
    this.suppressed++;
    if (!this.limited) {
      this.limited = true;
      this.opts.onLimit?.();
    }
  }
}

/** Drops terminal escape sequences (colours, cursor moves) and other control characters but tabs. */
export function cleanLine(s: string): string {
  return s
    .replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, "") // eslint-disable-line no-control-regex -- escape sequences are what is removed
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ""); // eslint-disable-line no-control-regex -- control characters are what is removed
}
