import { connectTcp, joinHostPort, tcpFailure } from "./connect.js";
import { type Outcome, fail, ok, warn } from "./step.js";
import { redactProxy } from "./proxy.js";

export interface TcpResult {
  outcome: Outcome;
  /** The addresses that accepted a connection (for the proxy: the host name), fastest first. */
  reachable: string[];
}

/** At most this many addresses of one name are tried. */
const MAX_ADDRESSES = 8;

/**
 * Step 2: a TCP connection to every address of the endpoint (through the
 * proxy: one CONNECT to the host name), each timed and closed at once.
 * Fails when none connects, warns when only some do (a client may pick
 * a dead one); a timeout and a refusal get their own hints.
 */
export async function tcpStep(
  host: string,
  addresses: string[],
  port: number,
  opts: { timeoutMs: number; proxy?: URL },
): Promise<TcpResult> {
  const targets = opts.proxy ? [host] : addresses.slice(0, MAX_ADDRESSES);
  const results = await Promise.all(
    targets.map(async (address) => {
      const start = performance.now();
      try {
        const socket = await connectTcp(address, port, opts.timeoutMs, opts.proxy);
        socket.destroy();
        return { address, ms: performance.now() - start };
      } catch (err) {
        return { address, err };
      }
    }),
  );
  const good = results
    .filter((r): r is { address: string; ms: number } => "ms" in r)
    .sort((a, b) => a.ms - b.ms);
  const via = opts.proxy ? ` through ${redactProxy(opts.proxy)}` : "";
  const parts = results.map((r) =>
    "ms" in r
      ? `${joinHostPort(r.address, port)} ${formatMs(r.ms!)}`
      : tcpFailure(r.err, joinHostPort(r.address, port), opts.timeoutMs, opts.proxy).value,
  );
  const value = `${parts.join("; ")}${via}`;
  const firstBad = results.find((r) => !("ms" in r));
  if (good.length === 0) {
    const f = tcpFailure(firstBad!.err, joinHostPort(firstBad!.address, port), opts.timeoutMs, opts.proxy);
    return { reachable: [], outcome: fail(value, f.code!, f.hint) };
  }
  if (firstBad) {
    const f = tcpFailure(firstBad.err, joinHostPort(firstBad.address, port), opts.timeoutMs, opts.proxy);
    return {
      reachable: good.map((g) => g.address),
      outcome: warn(
        value,
        f.code!,
        `Some addresses of ${host} do not connect; a client may pick one of them. ${f.hint}`,
      ),
    };
  }
  return { reachable: good.map((g) => g.address), outcome: ok(value) };
}

export function formatMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}
