import { Agent, type Dispatcher, ProxyAgent } from "undici";
import { createApiDispatcher } from "../api-dispatcher.js";

/**
 * The HTTP client of the doctor's API steps, once step 3 decided which CA to
 * trust: TLS 1.3, that CA alone (Node checks chain and name), the agent's
 * certificate when it has one, and the proxy when one applies (HTTP CONNECT
 * through undici's ProxyAgent).
 */
export function doctorDispatcher(opts: {
  caPem?: string;
  proxy?: URL;
  identity?: { certPem: string; keyPem: string };
  timeoutMs: number;
  /**
   * Accept any certificate: only to read the server's clock after the TLS
   * check failed (a clock far off breaks certificate validity, and the skew is
   * then the one thing worth knowing). Nothing secret is sent this way.
   */
  unverified?: boolean;
}): Dispatcher & { close(): Promise<void> } {
  if (opts.unverified) {
    const tls = { rejectUnauthorized: false, timeout: opts.timeoutMs };
    return opts.proxy === undefined
      ? new Agent({ connect: tls })
      : new ProxyAgent({ uri: opts.proxy.href, proxyTls: { timeout: opts.timeoutMs }, requestTls: tls });
  }
  if (opts.proxy === undefined)
    return createApiDispatcher({
      ...(opts.caPem !== undefined ? { caPem: opts.caPem } : {}),
      ...(opts.identity ? { clientCertPem: opts.identity.certPem, clientKeyPem: opts.identity.keyPem } : {}),
      connectTimeoutMs: opts.timeoutMs,
    });
  return new ProxyAgent({
    uri: opts.proxy.href,
    proxyTls: { timeout: opts.timeoutMs },
    requestTls: {
      minVersion: "TLSv1.3",
      maxVersion: "TLSv1.3",
      timeout: opts.timeoutMs,
      ...(opts.caPem !== undefined ? { ca: opts.caPem } : {}),
      ...(opts.identity ? { cert: opts.identity.certPem, key: opts.identity.keyPem } : {}),
    },
  });
}
