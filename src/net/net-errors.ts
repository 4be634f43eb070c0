import { LifeboatError } from "../base/index.js";

/** OpenSSL's words for "the chain does not lead to a CA you trust". */
const CHAIN_ERRORS = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
]);
const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EADDRNOTAVAIL",
]);
const TIMEOUTS = new Set([
  "ETIMEDOUT",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);
const LOST = new Set(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET", "UND_ERR_CLOSED"]);

export const CA_FINGERPRINT_HINT =
  "Check --ca-fingerprint against `openssl x509 -noout -fingerprint -sha256 -in ca.pem` run on the server (ca.pem is in its data directory), and that the endpoint is that server.";
export const CA_FILE_HINT =
  "Check that --ca-file is the ca.pem of the server at this endpoint (from its data directory), and that nothing between re-encrypts the connection: load balancers must pass TCP through.";

/**
 * Turns what a failed connection or request throws (Node's socket and TLS
 * errors, undici's errors, fetch's "fetch failed" wrapper) into a
 * LifeboatError saying what an operator can check. `target` names the other
 * end (`host:port` or a URL). LifeboatErrors pass through; errors that are not
 * about the network are returned as they are.
 */
export function toNetError(err: unknown, target: string): unknown {
  if (err instanceof LifeboatError) return err;
  if (err instanceof TypeError && err.cause !== undefined && err.message === "fetch failed") {
    return toNetError(err.cause, target);
  }
  const e = err as { code?: unknown; name?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  const detail = typeof e?.message === "string" ? e.message : String(err);
  if (UNREACHABLE.has(code)) {
    return new LifeboatError("NET_UNREACHABLE", `cannot reach ${target}: ${detail}`, {
      hint: "Check the endpoint's host and port, that the server is running, and that firewalls and the VPN let this host reach it.",
      retryable: true,
      cause: err,
    });
  }
  if (TIMEOUTS.has(code) || e?.name === "TimeoutError") {
    return new LifeboatError("NET_TIMEOUT", `${target} did not answer in time: ${detail}`, {
      hint: "The server or the network is slow or dropping packets; check the link and the server's load, then try again.",
      retryable: true,
      cause: err,
    });
  }
  if (LOST.has(code)) {
    return new LifeboatError("NET_CONNECTION_LOST", `the connection to ${target} broke: ${detail}`, {
      hint: "Try again. If it keeps happening, something on the path may be cutting TLS connections (a proxy or firewall that inspects TLS), or the server may be refusing this client's TLS version (Lifeboat speaks TLS 1.3 only).",
      retryable: true,
      cause: err,
    });
  }
  if (CHAIN_ERRORS.has(code)) {
    return new LifeboatError(
      "NET_CA_MISMATCH",
      `the server at ${target} has a certificate that is not from the expected CA (${code})`,
      {
        hint: CA_FILE_HINT,
        cause: err,
      },
    );
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return serverNameMismatch(target, detail, err);
  }
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
    return new LifeboatError(
      "NET_TLS_FAILED",
      `the server certificate of ${target} is not valid now (${code})`,
      {
        hint: "Check this host's clock (and the server's); if the clocks are right, renew the server certificate on the server.",
        cause: err,
      },
    );
  }
  if (code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_") || /\bSSL\b|\bTLS\b|alert/i.test(detail)) {
    return new LifeboatError("NET_TLS_FAILED", `TLS with ${target} failed: ${detail}`, {
      hint: "Lifeboat speaks TLS 1.3 only. Check that the endpoint is a Lifeboat server (https://, right port) and that nothing between intercepts TLS.",
      cause: err,
    });
  }
  return err;
}

export function serverNameMismatch(target: string, detail: string, cause?: unknown): LifeboatError {
  return new LifeboatError(
    "NET_SERVER_NAME_MISMATCH",
    `the certificate of ${target} does not name that host: ${detail}`,
    {
      hint: "Use an endpoint host name or address that the server's certificate lists (openssl x509 -noout -ext subjectAltName -in server.pem), or reissue the server certificate with this name.",
      cause,
    },
  );
}
