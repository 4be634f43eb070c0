/**
 * The programs the benchmark drives, and the Debian packages they come from:
 * missing ones are installed with apt-get (the benchmark runs as root on a
 * Debian machine), so one `npm run bench` measures every peer.
 */
import { existsSync } from "node:fs";
import { log, run } from "./sys.js";

/** Program → Debian package. */
export const TOOLS: Record<string, string> = {
  restic: "restic",
  borg: "borgbackup",
  rsync: "rsync",
  casync: "casync",
  fio: "fio",
  "/usr/bin/time": "time",
  debootstrap: "debootstrap",
};

function present(program: string): boolean {
  if (program.startsWith("/")) return existsSync(program);
  return run("sh", ["-c", 'command -v "$1"', "sh", program], { allowFail: true }).status === 0;
}

/** Installs the packages of the missing `programs` (all of TOOLS by default); throws if apt-get fails. */
export function ensureTools(programs: readonly string[] = Object.keys(TOOLS)): void {
  const missing = programs.filter((p) => !present(p));
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((p) => TOOLS[p] ?? p))];
  log(`installing ${packages.join(", ")} (missing: ${missing.join(", ")})`);
  run("apt-get", ["install", "-y", "-qq", ...packages], {
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    stderrInherit: true,
  });
}
