import { LifeboatError } from "../base/index.js";

/** Prints one JSON document on stdout (the `--json` contract). */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLines(lines: string[]): void {
  if (lines.length) process.stdout.write(`${lines.join("\n")}\n`);
}

/** Prints an error as the operator contract says and returns the exit code. */
export function reportError(err: unknown, opts: { json: boolean; debug: boolean }): number {
  const e =
    err instanceof LifeboatError
      ? err
      : new LifeboatError("INTERNAL", err instanceof Error ? err.message : String(err), {
          hint: "this is a bug; run again with --debug and report the output",
        });
  if (opts.json) process.stderr.write(`${JSON.stringify(e.toJSON())}\n`);
  else process.stderr.write(`error [${e.code}]: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ""}`);
  if (opts.debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  return e.exitCode;
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/**
 * Progress on a terminal: bytes, rate and ETA on one rewritten line, at most
 * four times a second. Silent when standard error is not a terminal.
 */
export class Progress {
  private last = 0;
  private readonly started = Date.now();
  constructor(
    private readonly enabled: boolean,
    private readonly label: string,
  ) {}

  update(done: number, total: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 250 && done < total) return;
    this.last = now;
    const secs = Math.max(0.001, (now - this.started) / 1000);
    const rate = done / secs;
    const eta = rate > 0 ? Math.max(0, (total - done) / rate) : 0;
    process.stderr.write(
      `\r${this.label}: ${formatBytes(done)} / ${formatBytes(total)}  ${(rate / 1e6).toFixed(0)} MB/s  ETA ${eta.toFixed(0)}s   `,
    );
  }

  done(): void {
    if (this.enabled && this.last > 0) process.stderr.write("\n");
  }
}
