/**
 * control: the control plane — the HTTP API operators, agents and replicators
 * talk to, over the database in control/db.
 *
 * Words: an *installation* is a data directory made by `server init`
 * (config, CA, keys, database, repository); an *API key* speaks for an
 * operator with a role; an *install token* lets one agent (or a few)
 * register once; *registration* trades a token and a CSR for a server record
 * and a client certificate; a *heartbeat* is an agent's periodic report.
 */
export { type BuildAppOptions, buildApp } from "./app.js";
export {
  type ControlConfig,
  DEFAULT_DATA_DIR,
  configSchema,
  dataPaths,
  loadConfig,
  parseConfig,
} from "./config.js";
export { type InitOptions, type InitResult, initServer } from "./init.js";
export { type RunningServer, type StartOptions, startServer } from "./start.js";
export { registerAgent } from "./register.js";
export {
  createToken,
  listTokens,
  revokeToken,
  TOKEN_DEFAULT_TTL_SECONDS,
  TOKEN_MAX_TTL_SECONDS,
} from "./tokens.js";
export { type AuditVerification, verifyAudit } from "./audit.js";
export { migrateToLatest, openDatabase } from "./db/index.js";
export { rebuildPitCatalog } from "./catalog.js";
