/**
 * The errno the doctor's own give-ups after a timeout carry: what Node's
 * sockets use for a connect timeout, so connect.ts and toNetError read it
 * as a timeout. (A constant, so that docs/errors.md's scan does not take it
 * for a Lifeboat error code.)
 */
export const TIMEOUT_ERRNO = "ETIMEDOUT";
