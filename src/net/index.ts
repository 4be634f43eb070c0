/**
 * net: TLS and certificates, shared by the control plane, replicators and
 * agents (so nothing here reaches control/, replicator/, store/ or cli/).
 *
 * Words: the *CA* is Lifeboat's private certificate authority, made once by
 * `lifeboat server init`; it signs every *leaf*: *server certificates* (what
 * the control plane and replicators present), *client certificates* (what an
 * agent or replicator presents for mutual TLS, naming its *identity*
 * `<role>:<subjectId>`), and the *signing certificate* for release bundles.
 * A *CSR* carries the key an agent made for itself; its private key never
 * leaves the agent. A *fingerprint* is a SHA-256 of DER: of a certificate
 * (`AB:CD:...`, as openssl prints it) or of a public key (lowercase hex).
 * *Pinning* means trusting the CA by its fingerprint instead of its file.
 *
 * Every key is ECDSA P-256, every PEM private key PKCS#8, every connection
 * TLS 1.3.
 */
export { type CaCredentials, CA_VALIDITY_DAYS, createCa } from "./ca.js";
export { SERVER_CERT_VALIDITY_DAYS, type ServerCert, issueServerCert } from "./server-cert.js";
export { SIGNING_CERT_VALIDITY_DAYS, issueSigningCert, signDetached, verifyDetached } from "./signing.js";
export { csrForKey, generateKeyAndCsr, publicKeyFingerprintOfCsr } from "./csr.js";
export { CLIENT_CERT_VALIDITY_HOURS, type ClientCert, issueClientCert } from "./client-cert.js";
export { type ClientIdentity, type ClientRole, CLIENT_ROLES, clientIdentity } from "./identity.js";
export {
  certFingerprint,
  formatFingerprint,
  normalizeFingerprint,
  parseFingerprint,
  sameFingerprint,
} from "./fingerprint.js";
export { serverTlsOptions } from "./server-tls.js";
export { checkPinnedServer } from "./pinned-ca.js";
export { type ClientCertError, verifyClientCertificate } from "./verify-client.js";
export { type ApiDispatcherOptions, createApiDispatcher } from "./api-dispatcher.js";
export { type FetchJsonOptions, fetchBytes, fetchJson } from "./fetch-json.js";
export { toNetError } from "./net-errors.js";
export { assertPrivateFile } from "./private-file.js";
export { type RevocationList, type RevocationListOptions, createRevocationList } from "./revocation-list.js";
export {
  DEFAULT_THROUGHPUT_BYTES,
  DEFAULT_TIMEOUT_MS,
  type DoctorIdentity,
  type DoctorOptions,
  type DoctorReport,
  type DoctorStep,
  EXPIRY_WARNING_MS,
  type ProxyEnvironment,
  type StepOutcome,
  type StepStatus,
  chooseProxy,
  doctorReport,
  openTunnel,
  redactProxy,
  runDoctor,
  timedStep,
} from "./doctor/index.js";
export { proxyFromEnvironment } from "./proxy-environment.js";
