import { randomBytes } from "node:crypto";
import { type Dispatcher, request } from "undici";
import { fetchJson } from "../fetch-json.js";
import { toNetError } from "../net-errors.js";
import { joinHostPort, parseHostPort } from "./addresses.js";
import { connectTcp, tcpFailure } from "./connect.js";
import { type ProxyChoice } from "./proxy.js";
import { type Outcome, fail, ok, warn } from "./step.js";
import { handshake, handshakeFailure, judgeTls } from "./tls-step.js";
import { formatMs } from "./tcp-step.js";

/** The data path's ALPN protocol (wire/listener.ts; net sits below wire, so it is repeated here). */
export const WIRE_ALPN = "lifeboat-wire/1";

/** Below this the initial sync of a large disk takes days: worth a warning. */
export const SLOW_MBITS = 10;

/**
 * Where an installed agent sends its data: what the control plane's
 * settings say (its assigned replicator), else the configured address,
 * else the endpoint's own host and port.
 */
export async function identityDataAddresses(
  dispatcher: Dispatcher,
  url: string,
  configured: string | undefined,
  fallback: string,
  timeoutMs: number,
): Promise<string[]> {
  const r = await fetchJson<{ dataAddress?: unknown }>(dispatcher, `${url}/api/v1/agent/settings`, {
    timeoutMs,
  });
  if (typeof r.dataAddress === "string" && r.dataAddress !== "") return [r.dataAddress];
  return [configured ?? fallback];
}

/**
 * Step 6a: every data address gets a TCP connection and a TLS handshake
 * offering only `lifeboat-wire/1` (the agent's certificate when it has one);
 * it passes when the server agrees to the wire protocol with a certificate
 * from the trusted CA naming that host. Each is timed.
 */
export async function dataStep(
  addresses: string[],
  opts: {
    caPem?: string;
    identity?: { certPem: string; keyPem: string };
    timeoutMs: number;
    proxyFor: (host: string, port: number) => ProxyChoice;
    now: number;
  },
): Promise<Outcome> {
  const parts: string[] = [];
  let problem: Outcome | undefined;
  for (const address of addresses) {
    const { host, port } = parseHostPort(address);
    const target = joinHostPort(host, port);
    const { proxy } = opts.proxyFor(host, port);
    const start = performance.now();
    let socket;
    try {
      socket = await connectTcp(host, port, opts.timeoutMs, proxy);
    } catch (err) {
      const f = tcpFailure(err, target, opts.timeoutMs, proxy);
      parts.push(f.value);
      problem ??= f;
      continue;
    }
    let tls;
    try {
      tls = await handshake(socket, {
        host,
        alpn: [WIRE_ALPN],
        timeoutMs: opts.timeoutMs,
        ...(opts.identity ? { certPem: opts.identity.certPem, keyPem: opts.identity.keyPem } : {}),
      });
    } catch (err) {
      const f = handshakeFailure(err, target);
      parts.push(f.value);
      problem ??= f;
      continue;
    }
    try {
      const judged = judgeTls(
        tls,
        host,
        target,
        opts.caPem !== undefined ? { caPem: opts.caPem } : {},
        opts.now,
      );
      const ms = performance.now() - start;
      if (judged.outcome.status === "fail") {
        parts.push(judged.outcome.value);
        problem ??= judged.outcome;
      } else if (tls.alpnProtocol !== WIRE_ALPN) {
        const f = fail(
          `${target}: the server did not agree to ${WIRE_ALPN}`,
          "DOCTOR_DATA_NO_WIRE",
          "The address answers TLS but not Lifeboat's data protocol: check it is the replicator's (or the server's, with its embedded replicator), and that nothing in between ends TLS.",
        );
        parts.push(f.value);
        problem ??= f;
      } else parts.push(`${target} ${WIRE_ALPN} in ${formatMs(ms)}${proxy ? " (through the proxy)" : ""}`);
    } finally {
      tls.destroy();
    }
  }
  const value = parts.join("; ");
  if (problem === undefined) return ok(value);
  if (parts.length > 1 && problem && parts.some((p) => p.includes(` ${WIRE_ALPN} in `)))
    return warn(value, problem.code!, problem.hint);
  return fail(value, problem.code!, problem.hint);
}

/**
 * Step 6b: POSTs `bytes` random bytes to the endpoint's throughput test,
 * which reads and discards them, and reports the rate in Mbit/s. The install
 * token (Authorization: Bearer) or the agent's certificate (in the dispatcher)
 * authorizes it; nothing is stored and the token is not spent.
 */
export async function throughputStep(
  dispatcher: Dispatcher,
  url: string,
  opts: { bytes: number; token?: string; timeoutMs: number; note: string },
): Promise<Outcome> {
  const body = randomBytes(opts.bytes);
  const start = performance.now();
  let status: number;
  let text: string;
  try {
    const res = await request(`${url}/api/v1/doctor/throughput`, {
      dispatcher,
      method: "POST",
      body,
      headers: {
        "content-type": "application/octet-stream",
        ...(opts.token !== undefined ? { authorization: `Bearer ${opts.token}` } : {}),
      },
      headersTimeout: Math.max(opts.timeoutMs, 60_000),
      bodyTimeout: opts.timeoutMs,
    });
    status = res.statusCode;
    text = await res.body.text();
  } catch (err) {
    const e = toNetError(err, url) as { code?: unknown; message?: unknown; hint?: unknown };
    return fail(
      typeof e?.message === "string" ? e.message : String(err),
      typeof e?.code === "string" ? e.code : "DOCTOR_THROUGHPUT_FAILED",
      typeof e?.hint === "string" && e.hint ? e.hint : "Check the link and the server's log.",
    );
  }
  const seconds = (performance.now() - start) / 1000;
  if (status === 404)
    return warn(
      "the server has no throughput test",
      "DOCTOR_THROUGHPUT_FAILED",
      "The server is older than this doctor; upgrade it to measure the link.",
    );
  if (status !== 200) {
    let code = "";
    try {
      const c = (JSON.parse(text) as { code?: unknown }).code;
      code = typeof c === "string" ? c : "";
    } catch {
      code = "";
    }
    return fail(
      `HTTP ${status}${code ? ` ${code}` : ""}`,
      "DOCTOR_THROUGHPUT_FAILED",
      status === 429
        ? "Too many tests from this address: wait a minute."
        : "The server refused the test: check the token (step token) or the agent's certificate.",
    );
  }
  const mbits = (opts.bytes * 8) / seconds / 1e6;
  const value = `${mbits.toFixed(1)} Mbit/s (${(opts.bytes / 1048576).toFixed(0)} MiB in ${seconds.toFixed(2)} s${opts.note})`;
  if (mbits < SLOW_MBITS) {
    const hours = (100 * 2 ** 30 * 8) / (mbits * 1e6) / 3600;
    return warn(
      value,
      "DOCTOR_THROUGHPUT_LOW",
      `At this rate the initial sync of 100 GiB takes about ${hours.toFixed(0)} hours: check the link's bandwidth and whether a proxy or VPN limits it.`,
    );
  }
  return ok(value);
}
