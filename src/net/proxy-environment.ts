import { chooseProxy } from "./doctor/proxy.js";

/**
 * The HTTP CONNECT proxy for a connection to host:port, from the process's
 * environment as curl reads it (HTTPS_PROXY or https_proxy, unless NO_PROXY
 * or no_proxy names the host); undefined: connect directly. The agent uses it
 * for both its control and its data connections, which share one port.
 */
export function proxyFromEnvironment(host: string, port: number, env = process.env): URL | undefined {
  const httpsProxy = env.HTTPS_PROXY ?? env.https_proxy;
  const noProxy = env.NO_PROXY ?? env.no_proxy;
  return chooseProxy(
    host,
    port,
    { ...(httpsProxy ? { httpsProxy } : {}), ...(noProxy ? { noProxy } : {}) },
    undefined,
  ).proxy;
}
