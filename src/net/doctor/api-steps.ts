import { type Dispatcher, request } from "undici";
import { BACKDATE_MS } from "../validity.js";
import { fetchJson } from "../fetch-json.js";
import { toNetError } from "../net-errors.js";
import { type Outcome, fail, ok, skipped, warn } from "./step.js";

/** Clock skew above this is worth a warning; above BACKDATE_MS certificates break. */
export const SKEW_WARNING_MS = 30_000;

export interface Health {
  outcome: Outcome;
  /** The server's clock minus this host's, in ms, and the measurement's uncertainty (±). */
  skew?: { ms: number; within: number; source: "healthz" | "Date header" };
}

/** Step 4a: GET /healthz; keeps what it needs to measure the clock skew (step 5). */
export async function healthStep(
  dispatcher: Dispatcher,
  url: string,
  opts: { timeoutMs: number; now: () => number },
): Promise<Health> {
  const t0 = opts.now();
  let status: number;
  let body: unknown;
  let date: string | undefined;
  try {
    const res = await request(`${url}/healthz`, {
      dispatcher,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
    });
    status = res.statusCode;
    const d = res.headers.date;
    date = Array.isArray(d) ? d[0] : d;
    const text = await res.body.text();
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  } catch (err) {
    const e = toNetError(err, url) as { code?: unknown; message?: unknown; hint?: unknown };
    return {
      outcome: fail(
        typeof e?.message === "string" ? e.message : String(err),
        typeof e?.code === "string" ? e.code : "DOCTOR_HEALTH_FAILED",
        typeof e?.hint === "string" && e.hint ? e.hint : "Check the server's log.",
      ),
    };
  }
  const t1 = opts.now();
  const mid = (t0 + t1) / 2;
  const b = (body ?? {}) as { status?: unknown; time?: unknown };
  let skew: Health["skew"];
  if (typeof b.time === "number") skew = { ms: b.time - mid, within: (t1 - t0) / 2, source: "healthz" };
  else if (date !== undefined && !Number.isNaN(Date.parse(date)))
    // The Date header has whole seconds: the server's time was somewhere in that second.
    skew = { ms: Date.parse(date) + 500 - mid, within: 500 + (t1 - t0) / 2, source: "Date header" };
  if (status !== 200 || b.status !== "ok")
    return {
      outcome: fail(
        `${url}/healthz answered HTTP ${status}`,
        "DOCTOR_HEALTH_FAILED",
        "The port answers but not as a healthy Lifeboat server: check the server's log, and that no proxy or load balancer answers in its place.",
      ),
      ...(skew ? { skew } : {}),
    };
  return { outcome: ok(`${url}/healthz: ok`), ...(skew ? { skew } : {}) };
}

/** Step 5: this host's clock against the server's. */
export function clockStep(health: Health | undefined): Outcome {
  if (health?.skew === undefined)
    return skipped(
      health ? "the server sent neither its time nor a Date header" : "the server's health could not be read",
    );
  const { ms, within, source } = health.skew;
  const abs = Math.abs(ms);
  const value = `this host is ${(abs / 1000).toFixed(1)} s ${ms > 0 ? "behind" : "ahead of"} the server (±${(within / 1000).toFixed(1)} s, ${source})`;
  const fix =
    "Synchronize this host's clock with the same time source as the server (chrony, ntpd or systemd-timesyncd; `timedatectl` shows the state).";
  if (abs - within > BACKDATE_MS)
    return fail(
      value,
      "DOCTOR_CLOCK_SKEW",
      `More than ${BACKDATE_MS / 60_000} minutes apart: certificates the server issues (valid from ${BACKDATE_MS / 60_000} minutes before its time) and token expiry are judged wrongly. ${fix}`,
    );
  if (abs - within > SKEW_WARNING_MS) return warn(value, "DOCTOR_CLOCK_SKEW", fix);
  return ok(value);
}

export interface TokenCheck {
  outcome: Outcome;
  /** For a valid token: where its server would send data (empty: the endpoint itself). */
  dataAddresses?: string[];
}

/** Step 4b: POST /api/v1/tokens/check, which reads the token's state without spending it. */
export async function tokenStep(
  dispatcher: Dispatcher,
  url: string,
  token: string,
  timeoutMs: number,
  now: number,
): Promise<TokenCheck> {
  let r: { state?: unknown; expiresAt?: unknown; dataAddresses?: unknown };
  try {
    r = await fetchJson(dispatcher, `${url}/api/v1/tokens/check`, { body: { token }, timeoutMs });
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown; hint?: unknown };
    if (e.code === "NOT_FOUND")
      return {
        outcome: warn(
          "the server cannot check tokens",
          "DOCTOR_TOKEN_UNCHECKED",
          "The server is older than this doctor; the token is checked when the agent registers.",
        ),
      };
    if (e.code === "RATE_LIMITED")
      return {
        outcome: warn(
          "too many checks from this address",
          "RATE_LIMITED",
          "Wait a minute and run the doctor again.",
        ),
      };
    throw err;
  }
  const newToken =
    "Ask an admin for a new install token (`lifeboat token create --role agent`) and give it with --token-file.";
  switch (r.state) {
    case "valid": {
      const expires = typeof r.expiresAt === "string" ? Date.parse(r.expiresAt) : NaN;
      const left = Math.round((expires - now) / 60_000);
      const addresses = Array.isArray(r.dataAddresses)
        ? r.dataAddresses.filter((a): a is string => typeof a === "string")
        : [];
      const value = `valid, not spent${Number.isNaN(expires) ? "" : `, expires ${new Date(expires).toISOString()} (in ${left} min)`}`;
      if (!Number.isNaN(expires) && expires - now < 10 * 60_000)
        return {
          outcome: warn(
            value,
            "DOCTOR_TOKEN_EXPIRING",
            `The token expires in ${left} minutes: install soon, or ${newToken.charAt(0).toLowerCase()}${newToken.slice(1)}`,
          ),
          dataAddresses: addresses,
        };
      return { outcome: ok(value), dataAddresses: addresses };
    }
    case "expired":
      return { outcome: fail("expired", "TOKEN_EXPIRED", newToken) };
    case "revoked":
      return { outcome: fail("revoked", "TOKEN_REVOKED", newToken) };
    case "used":
      return { outcome: fail("used: it has no registrations left", "TOKEN_USED", newToken) };
    default:
      return {
        outcome: fail(
          "unknown to this server",
          "TOKEN_INVALID",
          "The token is not one this server made (or not an agent token): check the token file (one line, ID.SECRET) and that the endpoint is the server that made it.",
        ),
      };
  }
}
