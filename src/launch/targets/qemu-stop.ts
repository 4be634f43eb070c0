/**
 * Stops a QEMU the target left running (keepRunning). The pid is checked to
 * still be a qemu-system process before any signal is sent, so a stale pid
 * reused by another program is left alone.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { LifeboatError } from "../../base/index.js";

/**
 * SIGTERM (QEMU powers the machine off at once), SIGKILL after `graceMs`.
 * Resolves true once that QEMU is gone, false when no QEMU runs as `pid`.
 */
export async function stopQemu(pid: number, graceMs = 10_000): Promise<boolean> {
  if (!(await isRunningQemu(pid))) return false;
  signal(pid, "SIGTERM");
  if (await goneWithin(pid, graceMs)) return true;
  signal(pid, "SIGKILL");
  if (await goneWithin(pid, 5000)) return true;
  throw new LifeboatError("LAUNCH_QEMU_STOP_FAILED", `QEMU (pid ${pid}) is still running after SIGKILL`, {
    hint: `check the process (ps -o pid,stat,cmd -p ${pid}); a process stuck in the kernel (state D) waits on its disk`,
  });
}

async function isRunningQemu(pid: number): Promise<boolean> {
  try {
    const argv0 = (await fs.readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0")[0] ?? "";
    return path.basename(argv0).startsWith("qemu-system") && (await state(pid)) !== "Z";
  } catch {
    return false;
  }
}

/** The process state letter from /proc/PID/stat (after the command name in parentheses), null when gone. */
async function state(pid: number): Promise<string | null> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return null;
  }
}

async function goneWithin(pid: number, ms: number): Promise<boolean> {
  const until = performance.now() + ms;
  for (;;) {
    const s = await state(pid);
    if (s === null || s === "Z") return true;
    if (performance.now() >= until) return false;
    await new Promise((resolve) => setTimeout(resolve, 100)); // a real process: real time
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
