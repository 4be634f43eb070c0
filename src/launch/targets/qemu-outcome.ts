import { promises as fs } from "node:fs";
import type { Accel } from "./qemu-args.js";
import type { QemuTargetOptions } from "./qemu-target.js";

export interface QemuEnd {
  end: "matched" | "exited" | "timeout" | "aborted";
  opts: QemuTargetOptions;
  accel: Accel;
  bootSeconds: number | null;
  matched: string | null;
  pid: number | undefined;
  exitCode: number | null;
  serialTail: string[];
  qemuLog: string;
}

/** The one line an operator reads about a QEMU launch. */
export async function describeQemuOutcome(e: QemuEnd): Promise<string> {
  const tail = e.serialTail.filter((l) => l.trim() !== "").slice(-3);
  const lastLines = tail.length
    ? `; last console lines: ${tail.join(" | ")}`
    : "; nothing appeared on the serial console (does the guest use it? kernel option console=ttyS0)";
  const pattern = `/${e.opts.successPattern}/`;
  switch (e.end) {
    case "matched":
      return (
        `the server booted: ${pattern} matched "${e.matched}" after ${e.bootSeconds} s (${e.accel})` +
        (e.pid !== undefined ? `; QEMU keeps running as pid ${e.pid}` : "")
      );
    case "timeout":
      return `${pattern} did not appear on the serial console within ${e.opts.timeoutSeconds} s (${e.accel})${lastLines}`;
    case "aborted":
      return `the launch was cancelled; QEMU was stopped${lastLines}`;
    case "exited": {
      const err = await lastLine(e.qemuLog);
      return `QEMU exited (status ${e.exitCode ?? "none"}) before ${pattern} appeared${err ? `: ${err}` : ""}${lastLines}`;
    }
  }
}

async function lastLine(file: string): Promise<string> {
  try {
    const text = (await fs.readFile(file, "utf8")).slice(-4096);
    return (
      text
        .split("\n")
        .filter((l) => l.trim() !== "")
        .pop() ?? ""
    );
  } catch {
    return "";
  }
}
