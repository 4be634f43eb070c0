/**
 * Looks at processes through /proc for tests that check what a target left
 * behind. A process may be reaped between any two reads of /proc, so a file
 * that vanishes means "gone", never an error.
 */
import { promises as fs } from "node:fs";

/** Whether pid is a process that still runs (not gone, not a zombie waiting to be reaped). */
export async function processRunning(pid: number | string): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ESRCH") return null;
    throw err;
  });
  return stat !== null && stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
}

/** Running processes whose command line contains every one of `texts` (a test's unique work directory, a program). */
export async function processesMentioning(...texts: string[]): Promise<number[]> {
  const found: number[] = [];
  for (const pid of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (texts.every((t) => cmdline.includes(t)) && (await processRunning(pid))) found.push(Number(pid));
  }
  return found;
}
