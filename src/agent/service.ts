import { LifeboatError, type Logger } from "../base/index.js";

/** The long-running agent service (`lifeboat agent run`). Placeholder until the service lands. */
export function runAgent(_opts: { configDir: string; logger?: Logger; signal?: AbortSignal }): Promise<void> {
  return Promise.reject(
    new LifeboatError("AGENT_NOT_IMPLEMENTED", "the agent service is not part of this build", {
      hint: "use a build that includes the agent service",
    }),
  );
}
