/**
 * base: the few things every domain shares — the error type, the clock and
 * the logger. Nothing here knows about disks, repositories or servers.
 */
export { LifeboatError, isLifeboatError, isRetryable } from "./errors.js";
export { type Clock, systemClock, ManualClock } from "./clock.js";
export { createLogger, silentLogger, type Logger } from "./log.js";
export { writeFileAtomic, type WriteAtomicOptions } from "./files.js";
export { settleAll } from "./settle.js";
export { LIFEBOAT_VERSION } from "./version.js";
