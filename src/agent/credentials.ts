/**
 * The agent's identity on the control plane and the wire: its private key,
 * its client certificate and the CA it trusts, read from the configuration
 * directory at start. The certificate is renewed while the agent runs; the
 * holder of the credentials sees the new one at its next connection.
 */
import { promises as fs } from "node:fs";
import { type Logger, writeFileAtomic } from "../base/index.js";
import { assertPrivateFile } from "../net/index.js";
import type { AgentPaths } from "./config.js";
import type { ControlClient } from "./control-client.js";

export interface AgentCredentials {
  keyPem: string;
  certPem: string;
  caPem: string;
}

/** The agent's key (checked 0600), certificate and the CA it trusts, from the configuration directory. */
export async function readCredentials(p: AgentPaths): Promise<AgentCredentials> {
  await assertPrivateFile(p.key, "agent private key");
  const [keyPem, certPem, caPem] = await Promise.all([
    fs.readFile(p.key, "utf8"),
    fs.readFile(p.cert, "utf8"),
    fs.readFile(p.ca, "utf8"),
  ]);
  return { keyPem, certPem, caPem };
}

/**
 * Renews the client certificate when it is due: writes it to `certFile` and
 * puts it in `identity`, so the next wire connection presents the new one.
 * Never throws: a failure is logged, and the caller tries again in an hour.
 */
export async function renewCertificate(
  control: ControlClient,
  certFile: string,
  identity: { certPem: string },
  log: Logger,
): Promise<void> {
  try {
    const pem = await control.renewIfDue();
    if (!pem) return;
    await writeFileAtomic(certFile, pem, { mode: 0o600 });
    identity.certPem = pem;
    log.info({}, "client certificate renewed");
  } catch (err) {
    log.warn({ err: String(err) }, "certificate renewal failed; retrying in an hour");
  }
}
