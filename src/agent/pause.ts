/**
 * The wait between two rounds of the agent's loops (heartbeats, the command
 * poll, the settings poll): it ends after `ms`, at once when the agent stops
 * (its abort signal), or when the wake handle it hands out is called.
 */

/**
 * Waits `ms`, or less when `signal` is aborted or when the `wakeable` handle
 * it hands out is called; returns at once when `signal` is already aborted.
 * Calling the handle again after the wait ended does nothing.
 */
export async function pause(
  ms: number,
  signal: AbortSignal,
  wakeable?: (wake: () => void) => void,
): Promise<void> {
  if (signal.aborted) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done);
    wakeable?.(done);
  });
}
