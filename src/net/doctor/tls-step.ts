import { TIMEOUT_ERRNO } from "./timeout.js";
import { X509Certificate, createHash } from "node:crypto";
import type { Socket } from "node:net";
import { type TLSSocket, checkServerIdentity, connect } from "node:tls";
import { formatFingerprint, sameFingerprint } from "../fingerprint.js";
import { CA_FILE_HINT, toNetError } from "../net-errors.js";
import { chainOf, checkPinnedServer } from "../pinned-ca.js";
import { DAY_MS } from "../validity.js";
import { type Outcome, fail, ok, warn } from "./step.js";

/** What the operator told the doctor to trust: the CA file, its fingerprint, both, or neither. */
export interface Trust {
  caPem?: string;
  /** Normalized SHA-256 of the CA certificate. */
  pin?: string;
}

/** Certificates that end sooner than this are reported (warn). */
export const EXPIRY_WARNING_MS = 30 * DAY_MS;

/**
 * A TLS handshake over `socket` (already connected, directly or through a
 * proxy) that accepts any certificate: the caller judges the chain with
 * judgeTls(). TLS 1.2 is allowed here only so that a middlebox speaking it
 * can be named; Lifeboat's own parts speak 1.3 only.
 */
export function handshake(
  socket: Socket,
  opts: {
    host: string;
    alpn: string[];
    timeoutMs: number;
    certPem?: string;
    keyPem?: string;
  },
): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const bare = opts.host;
    const tls = connect({
      socket,
      ...(/^[\d.]+$|:/.test(bare) ? {} : { servername: bare }),
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.3",
      ALPNProtocols: opts.alpn,
      rejectUnauthorized: false,
      ...(opts.certPem !== undefined ? { cert: opts.certPem, key: opts.keyPem } : {}),
    });
    const timer = setTimeout(() => {
      tls.destroy(
        Object.assign(new Error(`TLS handshake: no answer in ${opts.timeoutMs} ms`), { code: TIMEOUT_ERRNO }),
      );
    }, opts.timeoutMs);
    tls.once("error", (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    });
    tls.once("secureConnect", () => {
      clearTimeout(timer);
      tls.removeAllListeners("error");
      tls.on("error", () => undefined);
      resolve(tls);
    });
  });
}

/** A failed handshake as a step outcome. */
export function handshakeFailure(err: unknown, target: string): Outcome {
  const e = toNetError(err, target) as { code?: unknown; message?: unknown; hint?: unknown };
  const message = typeof e?.message === "string" ? e.message : String(err);
  if (/no.application.protocol/i.test(message))
    return fail(
      `${target}: the server does not offer the protocol asked for (${message})`,
      "DOCTOR_DATA_NO_WIRE",
      "The address does not speak Lifeboat's data protocol (lifeboat-wire/1): check that it is the replicator's (or the server's, with its embedded replicator) and that nothing in between ends TLS (load balancers must pass TCP through).",
    );
  return fail(
    `${target}: ${message}`,
    typeof e?.code === "string" && e.code.startsWith("NET_") ? e.code : "NET_TLS_FAILED",
    typeof e?.hint === "string" && e.hint
      ? e.hint
      : "Lifeboat speaks TLS 1.3 only. Check that the endpoint is a Lifeboat server (https://, right port) and that nothing between intercepts TLS.",
  );
}

export interface TlsJudgement {
  outcome: Outcome;
  /** The CA to trust from here on (PEM): the file, or the pinned certificate from the chain. */
  caPem?: string;
}

/**
 * Step 3's verdict on a finished handshake: the TLS version (1.3 expected),
 * the chain against the pinned CA (fingerprint: checkPinnedServer, the
 * agent's own check; file: the leaf is signed by it), the name, and the
 * certificates' validity (a warning within 30 days of the end). Without
 * a CA it warns, naming the CA the server presents so that the operator can
 * compare it with the server's ca.pem.
 */
export function judgeTls(
  socket: TLSSocket,
  host: string,
  target: string,
  trust: Trust,
  now: number,
): TlsJudgement {
  const protocol = socket.getProtocol() ?? "unknown";
  const peer = socket.getPeerCertificate(true);
  if (!peer?.raw || peer.raw.length === 0)
    return {
      outcome: fail(
        `${target}: ${protocol}, no certificate`,
        "NET_TLS_FAILED",
        "The endpoint is not a Lifeboat server; check the URL.",
      ),
    };
  const leaf = new X509Certificate(peer.raw);
  const chain = chainOf(peer);
  const presented = chain.map((c) => formatFingerprint(sha256(c.raw)));
  const versionProblem =
    protocol === "TLSv1.3"
      ? undefined
      : fail(
          `${target}: ${protocol} (1.3 expected)`,
          "DOCTOR_TLS_VERSION",
          "Lifeboat speaks TLS 1.3 only; a peer speaking an older version is something in between that ends TLS (an inspecting proxy or a load balancer). Let TCP pass through to the server.",
        );
  let ca: X509Certificate | undefined;
  let how: string;
  if (trust.pin !== undefined) {
    const problem = checkPinnedServer(socket, host, target, trust.pin, now);
    if (problem) return { outcome: versionProblem ?? fail(problem.message, problem.code, problem.hint) };
    ca = chain.find((c) => sameFingerprint(sha256(c.raw), trust.pin!));
    how = "pinned CA";
  } else if (trust.caPem !== undefined) {
    ca = new X509Certificate(trust.caPem);
    if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey))
      return {
        outcome:
          versionProblem ??
          fail(
            `${target}: the certificate ("${leaf.subject.replace(/\n/g, ", ")}") is not issued by the CA file ${formatFingerprint(sha256(ca.raw))}; the server presents ${presented.join(", ") || "no CA"}`,
            "NET_CA_MISMATCH",
            CA_FILE_HINT,
          ),
      };
    const validity =
      validityProblem(leaf, "server certificate", now) ?? validityProblem(ca, "CA certificate", now);
    if (validity)
      return {
        outcome:
          versionProblem ??
          fail(
            `${target}: the ${validity}`,
            "NET_TLS_FAILED",
            "Check this host's clock (and the server's); if the clocks are right, renew the certificate on the server.",
          ),
      };
    const nameError = checkServerIdentity(host, peer);
    if (nameError)
      return {
        outcome:
          versionProblem ??
          fail(
            `${target}: the certificate does not name ${host}: ${nameError.message}`,
            "NET_SERVER_NAME_MISMATCH",
            "Use an endpoint host name or address that the server's certificate lists (openssl x509 -noout -ext subjectAltName -in server.pem), or reissue the server certificate with this name.",
          ),
      };
    how = "CA file";
  } else {
    ca = chain.find((c) => c.ca);
    return {
      outcome:
        versionProblem ??
        warn(
          `${target}: ${protocol}; the server presents CA ${presented[0] ?? "(none)"}`,
          "DOCTOR_TLS_NOT_PINNED",
          `No CA given, so the chain was not checked. Compare the fingerprint with \`openssl x509 -noout -fingerprint -sha256 -in ca.pem\` on the server and pass it as --ca-fingerprint (the agent needs it too).`,
        ),
      ...(ca ? { caPem: ca.toString() } : {}),
    };
  }
  if (versionProblem) return { outcome: versionProblem };
  const ends = Math.min(Date.parse(leaf.validTo), ca ? Date.parse(ca.validTo) : Infinity);
  const which =
    ca && Date.parse(ca.validTo) < Date.parse(leaf.validTo) ? "CA certificate" : "server certificate";
  const days = Math.floor((ends - now) / DAY_MS);
  const value = `${target}: ${protocol}, ${how} ${shortFingerprint(ca ? sha256(ca.raw) : "")}, name ${host} ok, ${which} valid until ${new Date(ends).toISOString().slice(0, 10)} (${days} d)`;
  const caPem = ca?.toString();
  if (ends - now < EXPIRY_WARNING_MS)
    return {
      outcome: warn(
        value,
        "DOCTOR_CERT_EXPIRING",
        `The ${which} ends in ${days} days: renew it on the server (lifeboat doctor --server lists the certificates) before agents refuse the connection.`,
      ),
      ...(caPem ? { caPem } : {}),
    };
  return { outcome: ok(value), ...(caPem ? { caPem } : {}) };
}

function validityProblem(cert: X509Certificate, what: string, now: number): string | undefined {
  if (now > Date.parse(cert.validTo)) return `${what} expired ${new Date(cert.validTo).toISOString()}`;
  if (now < Date.parse(cert.validFrom))
    return `${what} is not valid before ${new Date(cert.validFrom).toISOString()}`;
  return undefined;
}

function sha256(der: Buffer): string {
  return createHash("sha256").update(der).digest("hex");
}

/** The first and last bytes of a fingerprint, enough to tell CAs apart in a report line. */
function shortFingerprint(hex: string): string {
  if (hex === "") return "";
  const f = formatFingerprint(hex);
  return `${f.slice(0, 11)}…${f.slice(-8)}`;
}
