/**
 * The connectivity doctor (`lifeboat doctor`): checks, from a source server
 * and before anything is installed, everything the agent will need to reach
 * the recovery site, one step at a time, each with what it measured and what
 * to do about a problem. Words: a *step* is one check (dns, tcp, tls, health,
 * token, clock, data, throughput, proxy) with a status ok, warn, fail or
 * skipped; the *report* is the steps and whether none failed. It lives in
 * net so that it ships with the agent (nothing here reaches control/).
 */
export {
  DEFAULT_THROUGHPUT_BYTES,
  DEFAULT_TIMEOUT_MS,
  type DoctorIdentity,
  type DoctorOptions,
  runDoctor,
} from "./doctor.js";
export {
  type DoctorReport,
  type DoctorStep,
  type Outcome as StepOutcome,
  type StepName,
  type StepStatus,
  report as doctorReport,
  timed as timedStep,
} from "./step.js";
export { type ProxyEnvironment, chooseProxy, openTunnel, redactProxy } from "./proxy.js";
export { EXPIRY_WARNING_MS } from "./tls-step.js";
export { SKEW_WARNING_MS } from "./api-steps.js";
export { isPrivateAddress, parseEndpoint } from "./addresses.js";
