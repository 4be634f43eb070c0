import { TIMEOUT_ERRNO } from "./timeout.js";
import { type Socket, connect } from "node:net";
import { joinHostPort } from "./addresses.js";
import { type Outcome, fail } from "./step.js";
import { openTunnel, redactProxy } from "./proxy.js";

/**
 * A TCP connection to address:port, directly or through an HTTP CONNECT
 * proxy, given up after `timeoutMs` (the error's code is then ETIMEDOUT).
 */
export function connectTcp(address: string, port: number, timeoutMs: number, proxy?: URL): Promise<Socket> {
  if (proxy !== undefined) return openTunnel(proxy, address, port, timeoutMs);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port });
    const timer = setTimeout(() => {
      socket.destroy(Object.assign(new Error(`no answer in ${timeoutMs} ms`), { code: TIMEOUT_ERRNO }));
    }, timeoutMs);
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      resolve(socket);
    });
  });
}

/** What a failed connection to `target` means for an operator. */
export function tcpFailure(err: unknown, target: string, timeoutMs: number, proxy?: URL): Outcome {
  const e = err as { code?: unknown; message?: unknown; hint?: unknown };
  const code = typeof e?.code === "string" ? e.code : "";
  const via = proxy ? ` through the proxy ${redactProxy(proxy)}` : "";
  if (code === "DOCTOR_PROXY_REFUSED") return fail(String(e.message), code, String(e.hint));
  if (code === "ETIMEDOUT")
    return fail(
      `${target}: no answer in ${(timeoutMs / 1000).toFixed(1)} s${via}`,
      "DOCTOR_TCP_TIMEOUT",
      `Probably dropped by a firewall: allow TCP from this host to ${target}${proxy ? " (and to the proxy)" : ""}, or check the route and VPN to it.`,
    );
  if (code === "ECONNREFUSED")
    return fail(
      `${target}: connection refused${via}`,
      "DOCTOR_TCP_REFUSED",
      proxy
        ? "The proxy refused the connection: check the proxy's address and port."
        : `Reachable, nothing listening on port ${target.replace(/^.*:/, "")}: check that the Lifeboat server runs and listens on this address (\`listen\` in its config.json), and the port in the endpoint.`,
    );
  if (
    code === "EHOSTUNREACH" ||
    code === "ENETUNREACH" ||
    code === "EINVAL" ||
    code === "EACCES" ||
    code === "EPERM"
  )
    return fail(
      `${target}: ${code}${via}`,
      "DOCTOR_TCP_UNREACHABLE",
      "No route to it, or a local firewall rejects it: check this host's routes (`ip route get ADDRESS`), the VPN, and local firewall rules.",
    );
  if (code === "ECONNRESET" || code === "EPIPE")
    return fail(
      `${target}: connection reset${via}`,
      "DOCTOR_TCP_RESET",
      "Something on the path resets the connection (a firewall rejecting it with a reset, or a proxy): check the firewall rules for this port.",
    );
  return fail(
    `${target}: ${typeof e?.message === "string" ? e.message : String(err)}${via}`,
    "DOCTOR_TCP_FAILED",
    "Check the address and port, the routes and firewalls between this host and the server.",
  );
}

export { joinHostPort };
