import type { TlsOptions } from "node:tls";

/**
 * TLS options for Lifeboat's one listener (https.createServer, fastify's
 * `https`, tls.createServer):
 *  - TLS 1.3 only, both ways;
 *  - the certificate chain sent is the leaf followed by the CA, so a client
 *    that pins only the CA's fingerprint can check the leaf against it;
 *  - a client certificate is asked for (`requestCert`) but not required
 *    (`rejectUnauthorized: false`): operators, the console, /healthz and
 *    /downloads/ come without one, and routes that need one call
 *    verifyClientCertificate();
 *  - ALPN offers `http/1.1` and then any extra protocols given (the data
 *    path's `lifeboat-wire/1`); a client offering none of them is refused.
 */
export function serverTlsOptions(opts: {
  certPem: string;
  keyPem: string;
  caPem: string;
  alpnProtocols?: string[];
}): TlsOptions & { ALPNProtocols: string[] } {
  return {
    key: opts.keyPem,
    cert: `${opts.certPem.trimEnd()}\n${opts.caPem.trimEnd()}\n`,
    ca: opts.caPem,
    minVersion: "TLSv1.3",
    maxVersion: "TLSv1.3",
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ["http/1.1", ...(opts.alpnProtocols ?? [])],
  };
}
