/**
 * The running agent's status file (D/state/status.json, read by `agent
 * status`) and, beside it, the wire session's resume token
 * (D/state/session.json), which the next start resumes from. The service
 * writes them about once a second, never while filesystems are frozen, and
 * a last time, STOPPED, when it stops.
 */
import { type Logger, writeFileAtomic } from "../base/index.js";
import type { Replication } from "./replication.js";
import { type AgentStatus, writeAgentStatus } from "./status.js";

export class StatusWriter {
  /** The writes queued: one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  private savedToken: string | undefined;

  constructor(
    private readonly files: { status: string; session: string },
    private readonly log: Logger,
  ) {}

  /** Queues a write of `s`, and of `resumeToken` when it changed. Never throws: a failure is logged. */
  write(s: AgentStatus, resumeToken: string | undefined): void {
    this.chain = this.chain
      .then(async () => {
        await writeAgentStatus(this.files.status, s);
        if (resumeToken && resumeToken !== this.savedToken) {
          await writeFileAtomic(this.files.session, `${JSON.stringify({ resumeToken })}\n`, {
            mode: 0o600,
          });
          this.savedToken = resumeToken;
        }
      })
      .catch((err: unknown) => this.log.warn({ err: String(err) }, "cannot write the status file"));
  }

  /** After the writes queued: the engine's last status, as STOPPED and not connected (none while frozen). */
  async stopped(engine: Replication): Promise<void> {
    await this.chain;
    const s = engine.status();
    if (s) await writeAgentStatus(this.files.status, { ...s, state: "STOPPED", connected: false });
  }
}
