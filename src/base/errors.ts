/**
 * One base error for the whole project. Callers match on `code` (stable, listed
 * in docs/errors.md); `hint` is what an operator can do about it; `retryable`
 * is decided where the failure is understood (a backend knows a 503 from a
 * 403) and only read by retry layers.
 */
export class LifeboatError extends Error {
  readonly code: string;
  readonly hint: string;
  readonly retryable: boolean;
  /** Process exit status the CLI uses for this error (1 unless said otherwise). */
  readonly exitCode: number;

  constructor(
    code: string,
    message: string,
    opts: { hint?: string; cause?: unknown; retryable?: boolean; exitCode?: number } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "LifeboatError";
    this.code = code;
    this.hint = opts.hint ?? "";
    this.retryable = opts.retryable ?? false;
    this.exitCode = opts.exitCode ?? 1;
  }

  toJSON(): { code: string; message: string; hint: string } {
    return { code: this.code, message: this.message, hint: this.hint };
  }
}

export function isLifeboatError(err: unknown, code?: string): err is LifeboatError {
  return err instanceof LifeboatError && (code === undefined || err.code === code);
}

/** True when a retry may help: a LifeboatError that says so, or a network-level errno. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof LifeboatError) return err.retryable;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && TRANSIENT_ERRNOS.has(code);
}

const TRANSIENT_ERRNOS = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "EBUSY",
  "EAGAIN",
  "EMFILE",
  "ENFILE",
]);
