/**
 * Stopping what a target started. Children run in a process group of their
 * own (spawned detached), so a script's own children go with it: SIGTERM to
 * the group, and SIGKILL when it has not exited after a grace period.
 */
import type { ChildProcess } from "node:child_process";

/** Sends `signal` to the process group led by `pid`; a group already gone is not an error. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group has exited
  }
}

/** Resolves once `child` has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/**
 * Stops `child` and its process group: SIGTERM, then SIGKILL after `graceMs`.
 * Resolves when the child has exited. (A real timer: this waits on a real process.)
 */
export async function stopGroup(child: ChildProcess, graceMs: number): Promise<void> {
  const pid = child.pid;
  if (pid === undefined) return;
  const done = exited(child);
  signalGroup(pid, "SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), graceMs)));
  const first = await Promise.race([done, grace]);
  clearTimeout(timer);
  if (first === "late") {
    signalGroup(pid, "SIGKILL");
    await done;
  }
  // Whatever is left of the group (children that ignored SIGTERM) goes too.
  signalGroup(pid, "SIGKILL");
}
