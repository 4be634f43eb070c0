/**
 * What the agent does with a command from the control plane's long poll
 * (service.ts): a PIT on demand or a group PIT, a rescan, a bandwidth cap,
 * or a failback's change of mode. Each command is reported done, with its
 * result, or failed, with the error's code, so that `lifeboat pits create`
 * and the console see how it ended.
 */
import { LifeboatError, type Logger } from "../base/index.js";
import type { AgentCommand, AgentMode, ControlClient } from "./control-client.js";
import type { PointRequest, Replication } from "./replication.js";

export interface CommandContext {
  control: ControlClient;
  replication: Replication;
  /** Switches the agent between replicating, receiving a failback and fenced. */
  applyMode(mode: AgentMode): Promise<void>;
  log: Logger;
}

/** Runs one command and reports how it ended; never throws. */
export async function runCommand(c: AgentCommand, ctx: CommandContext): Promise<void> {
  const { control, replication } = ctx;
  try {
    let result: Record<string, unknown> = {};
    if (c.kind === "make-pit" || c.kind === "group-pit") {
      const req: PointRequest = {};
      const wanted = c.params.consistency;
      if (typeof wanted === "string") req.consistency = wanted as NonNullable<PointRequest["consistency"]>;
      if (c.kind === "group-pit") req.barrier = () => control.frozen(c.id);
      const pit = await replication.requestPoint(req);
      result = {
        pitId: pit.pitId ?? pit.pointId,
        seq: pit.seq,
        takenAt: pit.takenAt,
        consistency: pit.consistency,
        disks: pit.disks,
      };
    } else if (c.kind === "rescan") {
      const disks = Array.isArray(c.params.disks) ? (c.params.disks as number[]) : undefined;
      replication.requestRescan(disks);
    } else if (c.kind === "set-bandwidth") {
      replication.setBandwidth(Number(c.params.mbps ?? 0));
    } else if (c.kind === "failback") {
      // The mode changed (a failback started, ended or was cancelled): read it now.
      const { mode } = await control.settings();
      if (mode) await ctx.applyMode(mode);
    }
    await control.complete(c.id, { ok: true, result });
  } catch (err) {
    const e = err instanceof LifeboatError ? err : new LifeboatError("AGENT_IO", String(err), { cause: err });
    ctx.log.warn({ command: c.kind, id: c.id, code: e.code, err: e.message }, "command failed");
    await control.complete(c.id, { ok: false, code: e.code, message: e.message }).catch(() => undefined);
  }
}
