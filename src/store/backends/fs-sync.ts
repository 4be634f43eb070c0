import { type ChildProcessWithoutNullStreams, execFile, spawn } from "node:child_process";
import type { Socket } from "node:net";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/**
 * syncfs(2) for Node, which has no binding for it: `sync --file-system DIR`.
 *
 * Spawning a process from Node forks it, and the fork copies the page tables
 * of the whole process on the event loop's thread: about 30 ms for a
 * replicator of 400 MiB, at every checkpoint. So the process keeps one small
 * shell that runs `sync` on request, one directory per line, and answers
 * each with its exit status; only that shell forks. It is started at the
 * first request, answers requests in order, is restarted if it dies, and
 * never keeps the process alive while nothing waits for it.
 */
export async function syncFileSystem(dir: string): Promise<void> {
  // A name with a newline cannot go through the line protocol: run sync directly.
  if (dir.includes("\n")) {
    await execFileAsync("sync", ["--file-system", dir]);
    return;
  }
  return syncer().request(dir);
}

/**
 * Each request is answered by what sync said, if anything, then a line of
 * STATUS and its exit status. Only `sync` itself is forked: capturing its
 * words in the shell would fork a subshell and a pipeline per request too.
 */
const STATUS = "lifeboat-sync-status";
const SCRIPT = `while IFS= read -r d; do sync --file-system -- "$d" 2>&1; echo "${STATUS} $?"; done`;
/** What sync said about one request is cut to this many characters. */
const MAX_SAID = 2000;

interface Waiter {
  dir: string;
  resolve(): void;
  reject(err: Error): void;
}

class Syncer {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly waiting: Waiter[] = [];
  private out = "";
  /** What sync said since the last status line. */
  private said = "";

  request(dir: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const child = this.child ?? this.start();
      this.waiting.push({ dir, resolve, reject });
      (child.stdout as Socket).ref();
      child.stdin.write(`${dir}\n`);
    });
  }

  private start(): ChildProcessWithoutNullStreams {
    const child = spawn("sh", ["-c", SCRIPT], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    child.unref();
    child.stdin.on("error", () => undefined); // reported through "exit"
    child.stdout.setEncoding("utf8");
    child.stderr.resume(); // the script sends nothing there
    child.stdout.on("data", (s: string) => {
      this.out += s;
      let nl: number;
      while ((nl = this.out.indexOf("\n")) >= 0) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        if (!line.startsWith(`${STATUS} `)) {
          this.said = `${this.said} ${line}`.slice(0, MAX_SAID);
          continue;
        }
        const status = line.slice(STATUS.length + 1);
        const said = this.said.trim();
        this.said = "";
        const w = this.waiting.shift();
        if (w === undefined) continue;
        if (status === "0") w.resolve();
        else w.reject(new Error(`sync --file-system ${w.dir} failed (status ${status}): ${said}`));
      }
      if (this.waiting.length === 0) (child.stdout as Socket).unref();
    });
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.out = "";
      this.said = "";
      for (const w of this.waiting.splice(0)) w.reject(new Error(`sync --file-system ${w.dir}: ${why}`));
    };
    child.on("error", (e) => gone(e.message));
    child.on("exit", (code, signal) => gone(`the sync helper exited (${signal ?? code})`));
    (child.stdout as Socket).unref();
    (child.stderr as Socket).unref();
    return child;
  }
}

let shared: Syncer | undefined;
const syncer = (): Syncer => (shared ??= new Syncer());
