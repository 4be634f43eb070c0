/**
 * `lifeboat agent run` in the foreground: starts the agent service and runs
 * it until SIGTERM or SIGINT, or, in the failback boot environment, until
 * the failback it receives ends. SIGUSR2 asks it to read a rescan request
 * and check its disks (sent by `agent rescan` and `agent disks`).
 */
import type { Logger } from "../base/index.js";
import { AgentService } from "./service.js";

/** Runs the agent until SIGTERM or SIGINT (or `signal`), then stops it cleanly. */
export async function runAgent(opts: {
  configDir: string;
  logger?: Logger;
  signal?: AbortSignal;
  /** Receive a failback only, and return once it ends: with true when it ended ready. */
  failbackOnly?: boolean;
}): Promise<boolean> {
  let ended: string | undefined;
  let endWait: () => void = () => undefined;
  const svc = await AgentService.start({
    configDir: opts.configDir,
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.failbackOnly
      ? {
          failbackOnly: true,
          onFailbackEnd: (state: string) => {
            ended = state;
            endWait();
          },
        }
      : {}),
  });
  // `agent rescan` and `agent disks add|remove` signal: a rescan request, or config.json's disks changed.
  const onUsr2 = () => {
    void svc.readRescanRequest();
    svc.checkDisks();
  };
  process.on("SIGUSR2", onUsr2);
  try {
    await new Promise<void>((resolve) => {
      const done = () => resolve();
      endWait = done;
      if (ended !== undefined) done(); // it ended while the service was starting
      process.once("SIGTERM", done);
      process.once("SIGINT", done);
      opts.signal?.addEventListener("abort", done);
    });
  } finally {
    process.off("SIGUSR2", onUsr2);
    await svc.stop();
  }
  if (ended !== undefined) opts.logger?.info({ state: ended }, "failback ended; the agent exits");
  return ended === "ready";
}
