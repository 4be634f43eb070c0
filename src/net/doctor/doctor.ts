import { type Clock, LifeboatError, systemClock } from "../../base/index.js";
import { certFingerprint, formatFingerprint, parseFingerprint, sameFingerprint } from "../fingerprint.js";
import { type Endpoint, joinHostPort, parseEndpoint } from "./addresses.js";
import { type Health, clockStep, healthStep, tokenStep } from "./api-steps.js";
import { connectTcp, tcpFailure } from "./connect.js";
import { dataStep, identityDataAddresses, throughputStep } from "./data-steps.js";
import { doctorDispatcher } from "./dispatcher.js";
import { type ProxyChoice, type ProxyEnvironment, chooseProxy, redactProxy } from "./proxy.js";
import { resolveStep } from "./resolve-step.js";
import { type DoctorReport, type DoctorStep, type Outcome, ok, report, skipped, timed } from "./step.js";
import { tcpStep } from "./tcp-step.js";
import { type Trust, handshake, handshakeFailure, judgeTls } from "./tls-step.js";

/** An agent identity already on this host (`agent install` made it). */
export interface DoctorIdentity {
  certPem: string;
  keyPem: string;
  /** config.json's dataAddress, if it has one. */
  dataAddress?: string;
}

export interface DoctorOptions {
  /** The control plane, https://HOST[:PORT]. */
  endpoint: string;
  /** The CA file's PEM and/or the CA's SHA-256 fingerprint (both: they must agree). */
  caPem?: string;
  caFingerprint?: string;
  /** The install token: checked (never spent) and used for the throughput test. */
  token?: string;
  identity?: DoctorIdentity;
  /** --proxy: always tunnel through this proxy. */
  proxy?: string;
  /** The proxy variables of the environment. */
  proxyEnv?: ProxyEnvironment;
  /** Longest wait for each connection, handshake or answer (default 5 s). */
  timeoutMs?: number;
  /** Size of the throughput test (default 4 MiB, at most 8 MiB). */
  throughputBytes?: number;
  clock?: Clock;
}

export const DEFAULT_TIMEOUT_MS = 5000;
export const DEFAULT_THROUGHPUT_BYTES = 4 * 1024 * 1024;
/** The server's throughput route takes at most this much. */
export const MAX_THROUGHPUT_BYTES = 8 * 1024 * 1024;

/**
 * Runs the connectivity doctor from a source server against a control plane
 * and returns its report: dns, tcp, tls, health, token, clock, data,
 * throughput, proxy (docs/doctor.md says what each means). Never throws for
 * what it finds; throws USAGE-like errors (exit 2) only for options that
 * contradict each other (a CA file that is not the pinned fingerprint, a
 * proxy URL that is not one).
 *
 * Each step runs only when the steps it stands on passed: nothing after a
 * failed TLS check talks to the server (the token would go to a server not
 * proved to be the right one), and without a pinned CA the token is never sent.
 */
export async function runDoctor(opts: DoctorOptions): Promise<DoctorReport> {
  const endpoint = parseEndpoint(opts.endpoint);
  const clock = opts.clock ?? systemClock;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const trust: Trust = {
    ...(opts.caPem !== undefined ? { caPem: opts.caPem } : {}),
    ...(opts.caFingerprint !== undefined ? { pin: parseFingerprint(opts.caFingerprint) } : {}),
  };
  if (
    trust.pin !== undefined &&
    trust.caPem !== undefined &&
    !sameFingerprint(certFingerprint(trust.caPem), trust.pin)
  )
    throw new LifeboatError(
      "NET_CA_MISMATCH",
      `the CA file has fingerprint ${certFingerprint(trust.caPem)}, not the pinned ${formatFingerprint(trust.pin)}`,
      { hint: "Check --ca-file and --ca-fingerprint name the same CA (the server's ca.pem).", exitCode: 2 },
    );
  const env = opts.proxyEnv ?? {};
  const proxyFor = (host: string, port: number): ProxyChoice => chooseProxy(host, port, env, opts.proxy);
  const run: Run = {
    opts,
    endpoint,
    target: joinHostPort(endpoint.host, endpoint.port),
    clock,
    timeoutMs,
    trust,
    pinned: trust.pin !== undefined || trust.caPem !== undefined,
    choice: proxyFor(endpoint.host, endpoint.port),
    proxyFor,
  };
  const steps: DoctorStep[] = [];
  const reach = await reachSteps(run, steps);
  await serverSteps(run, reach, steps);
  steps.push(await timed("proxy", () => proxyStep(run.choice, env, run.target)));
  return report(steps);
}

/** What every step reads: the options and what was decided before the first one. */
interface Run {
  opts: DoctorOptions;
  endpoint: Endpoint;
  /** host:port of the endpoint. */
  target: string;
  clock: Clock;
  timeoutMs: number;
  trust: Trust;
  /** A CA was given (file or fingerprint): only then is the token sent. */
  pinned: boolean;
  /** The proxy for the endpoint. */
  choice: ProxyChoice;
  proxyFor: (host: string, port: number) => ProxyChoice;
}

interface Reach {
  /** Addresses (or, through a proxy, the host name) that accepted TCP. */
  reachable: string[];
  /** The CA to trust from here on; undefined when the TLS step did not pass. */
  caPem?: string;
}

/** Steps 1 to 3: dns, tcp, tls. */
async function reachSteps(run: Run, steps: DoctorStep[]): Promise<Reach> {
  const { endpoint, timeoutMs, choice } = run;
  let addresses: string[] = [];
  steps.push(
    await timed("dns", async () => {
      const r = await resolveStep(endpoint.host, {
        privateCa: run.pinned,
        viaProxy: choice.proxy !== undefined,
        timeoutMs,
      });
      addresses = r.addresses;
      return r.outcome;
    }),
  );
  const reach: Reach = { reachable: [] };
  steps.push(
    await timed("tcp", async () => {
      if (addresses.length === 0 && choice.proxy === undefined) return skipped("the name did not resolve");
      const r = await tcpStep(endpoint.host, addresses, endpoint.port, {
        timeoutMs,
        ...(choice.proxy ? { proxy: choice.proxy } : {}),
      });
      reach.reachable = r.reachable;
      return r.outcome;
    }),
  );
  steps.push(
    await timed("tls", async () => {
      if (reach.reachable.length === 0) return skipped("no TCP connection");
      const address = reach.reachable[0]!;
      let socket;
      try {
        socket = await connectTcp(address, endpoint.port, timeoutMs, choice.proxy);
      } catch (err) {
        return tcpFailure(err, joinHostPort(address, endpoint.port), timeoutMs, choice.proxy);
      }
      let tls;
      try {
        tls = await handshake(socket, { host: endpoint.host, alpn: ["http/1.1"], timeoutMs });
      } catch (err) {
        return handshakeFailure(err, run.target);
      }
      try {
        const judged = judgeTls(tls, endpoint.host, run.target, run.trust, run.clock.now());
        if (judged.outcome.status !== "fail" && judged.caPem !== undefined) reach.caPem = judged.caPem;
        return judged.outcome;
      } finally {
        tls.destroy();
      }
    }),
  );
  return reach;
}

/** Steps 4 to 6 over the trusted connection: health, token, clock, data, throughput. */
async function serverSteps(run: Run, reach: Reach, steps: DoctorStep[]): Promise<void> {
  const { opts, endpoint, timeoutMs, clock } = run;
  const caPem = reach.caPem;
  const proxy = run.choice.proxy ? { proxy: run.choice.proxy } : {};
  const api = caPem !== undefined ? doctorDispatcher({ caPem, ...proxy, timeoutMs }) : undefined;
  const agentApi =
    caPem !== undefined && opts.identity
      ? doctorDispatcher({ caPem, ...proxy, identity: opts.identity, timeoutMs })
      : undefined;
  const tokenMaySend = api !== undefined && run.pinned;
  try {
    let health: Health | undefined;
    steps.push(
      await timed("health", async () => {
        if (!api) return skipped("the TLS check did not pass: nothing above it can be trusted");
        health = await healthStep(api, endpoint.url, { timeoutMs, now: () => clock.now() });
        return health.outcome;
      }),
    );

    let dataAddresses: string[] | undefined;
    steps.push(
      await timed("token", async () => {
        if (opts.token === undefined)
          return skipped(
            opts.identity
              ? "no install token given; this host has an agent identity, which needs none"
              : "no install token given (--token-file F, LIFEBOAT_TOKEN or standard input) to check",
          );
        if (!tokenMaySend)
          return skipped(
            api
              ? "the token is sent only to a server whose CA is pinned (--ca-file or --ca-fingerprint)"
              : "the TLS check did not pass: the token is not sent",
          );
        const r = await tokenStep(api, endpoint.url, opts.token, timeoutMs, clock.now());
        dataAddresses = r.dataAddresses;
        // A host already registered needs no token (install.sh run again): a spent one is only news.
        if (opts.identity && r.outcome.status === "fail")
          return {
            ...r.outcome,
            status: "warn",
            hint: `This host already has an agent identity for this endpoint, which needs no token. ${r.outcome.hint}`,
          };
        return r.outcome;
      }),
    );

    steps.push(await timed("clock", () => (api ? clockStep(health) : unverifiedClock(run, reach))));

    let learned: { addresses: string[]; from: string } | undefined;
    steps.push(
      await timed("data", async () => {
        if (!api) return skipped("the TLS check did not pass");
        if (agentApi) {
          const configured = opts.identity!.dataAddress;
          learned = {
            addresses: await identityDataAddresses(agentApi, endpoint.url, configured, run.target, timeoutMs),
            from: "the agent's settings",
          };
        } else if (dataAddresses !== undefined)
          learned = {
            addresses: dataAddresses.length > 0 ? dataAddresses : [run.target],
            from: "the token check",
          };
        else return skipped("no agent identity and no valid install token to learn the data address with");
        const outcome = await dataStep(learned.addresses, {
          ...(caPem !== undefined ? { caPem } : {}),
          ...(opts.identity ? { identity: opts.identity } : {}),
          timeoutMs,
          proxyFor: run.proxyFor,
          now: clock.now(),
        });
        return { ...outcome, value: `${outcome.value} (from ${learned.from})` };
      }),
    );

    steps.push(
      await timed("throughput", async () => {
        if (!api) return skipped("the TLS check did not pass");
        // The token authorizes the test only once the server said it is valid.
        const viaToken = !agentApi && opts.token !== undefined && dataAddresses !== undefined;
        if (!agentApi && !viaToken)
          return skipped("no agent identity and no valid install token to authorize the test");
        const elsewhere = learned?.addresses.filter((a) => a !== run.target) ?? [];
        return throughputStep(agentApi ?? api, endpoint.url, {
          bytes: Math.min(opts.throughputBytes ?? DEFAULT_THROUGHPUT_BYTES, MAX_THROUGHPUT_BYTES),
          ...(viaToken ? { token: opts.token! } : {}),
          timeoutMs,
          note:
            elsewhere.length > 0
              ? `, to the control plane; the replicator at ${elsewhere.join(", ")} has no test of its own`
              : "",
        });
      }),
    );
  } finally {
    await api?.close();
    await agentApi?.close();
  }
}

/**
 * Step 5 when the TLS check failed: the server's time is read anyway, without
 * trusting it (nothing secret is sent), since a clock far off is one reason
 * certificates fail.
 */
async function unverifiedClock(run: Run, reach: Reach): Promise<Outcome> {
  if (reach.reachable.length === 0) return skipped("no TCP connection");
  const unverified = doctorDispatcher({
    ...(run.choice.proxy ? { proxy: run.choice.proxy } : {}),
    timeoutMs: run.timeoutMs,
    unverified: true,
  });
  try {
    const h = await healthStep(unverified, run.endpoint.url, {
      timeoutMs: run.timeoutMs,
      now: () => run.clock.now(),
    });
    const outcome = clockStep(h.skew ? h : undefined);
    return outcome.status === "skipped"
      ? outcome
      : { ...outcome, value: `${outcome.value}; server not verified` };
  } finally {
    await unverified.close();
  }
}

/** Step 7: which proxy settings this host has and whether they apply to the endpoint. */
function proxyStep(choice: ProxyChoice, env: ProxyEnvironment, target: string): Outcome {
  const seen = [
    ...(env.httpsProxy ? [`HTTPS_PROXY=${redactProxy(env.httpsProxy)}`] : []),
    ...(env.httpProxy ? [`HTTP_PROXY=${redactProxy(env.httpProxy)}`] : []),
    ...(env.noProxy ? [`NO_PROXY=${env.noProxy}`] : []),
  ];
  const found = seen.length > 0 ? seen.join(", ") : "no proxy variables set";
  if (choice.source === "--proxy")
    return ok(`--proxy ${redactProxy(choice.proxy!)} used for ${target} (${found})`);
  if (choice.proxy) return ok(`${found}: HTTPS_PROXY used for ${target}`);
  if (choice.bypassedBy) return ok(`${found}: direct to ${target} (NO_PROXY entry ${choice.bypassedBy})`);
  if (env.httpProxy) return ok(`${found}: direct to ${target} (HTTP_PROXY does not apply to https://)`);
  return ok(`${found}: direct to ${target}`);
}
