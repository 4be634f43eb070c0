/**
 * One line of the doctor's report. `value` is what was measured (addresses,
 * times, versions, a rate), `hint` what an operator can do about a warn or a
 * fail (for a skipped step: why it was skipped), `code` a stable name of the
 * problem (docs/errors.md) for scripts such as install.sh.
 */
export type StepStatus = "ok" | "warn" | "fail" | "skipped";

export type StepName =
  | "dns"
  | "tcp"
  | "tls"
  | "health"
  | "token"
  | "clock"
  | "data"
  | "throughput"
  | "proxy"
  // `lifeboat doctor --server`
  | "certificates"
  | "permissions"
  | "database"
  | "repository"
  | "listen";

export interface DoctorStep {
  name: StepName;
  status: StepStatus;
  value: string;
  /** How long the step took (milliseconds, rounded). */
  ms: number;
  hint: string;
  code?: string;
}

export interface DoctorReport {
  steps: DoctorStep[];
  /** True when no step failed (warnings and skips allowed): the exit status is 0. */
  ok: boolean;
}

export function report(steps: DoctorStep[]): DoctorReport {
  return { steps, ok: steps.every((s) => s.status !== "fail") };
}

/** A step's outcome before it is timed. */
export type Outcome = Omit<DoctorStep, "name" | "ms">;

export const ok = (value: string): Outcome => ({ status: "ok", value, hint: "" });
export const warn = (value: string, code: string, hint: string): Outcome => ({
  status: "warn",
  value,
  hint,
  code,
});
export const fail = (value: string, code: string, hint: string): Outcome => ({
  status: "fail",
  value,
  hint,
  code,
});
export const skipped = (why: string, value = ""): Outcome => ({ status: "skipped", value, hint: why });

/** Runs `fn` as step `name`: times it, and turns anything it throws into a fail with DOCTOR_STEP_FAILED. */
export async function timed(name: StepName, fn: () => Promise<Outcome> | Outcome): Promise<DoctorStep> {
  const start = performance.now();
  let outcome: Outcome;
  try {
    outcome = await fn();
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown; hint?: unknown };
    outcome = fail(
      typeof e?.message === "string" ? e.message : String(err),
      typeof e?.code === "string" && /^[A-Z][A-Z0-9_]*$/.test(e.code) ? e.code : "DOCTOR_STEP_FAILED",
      typeof e?.hint === "string" && e.hint !== "" ? e.hint : "Run again with --debug and report the output.",
    );
  }
  return { name, ...outcome, ms: Math.round(performance.now() - start) };
}
