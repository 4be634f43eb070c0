import { promises as fs } from "node:fs";
import path from "node:path";
import { Worker } from "node:worker_threads";
import { type Clock, LifeboatError, type Logger, silentLogger } from "../base/index.js";
import type { BootInventory } from "./boot-inventory.js";

export interface BootWatcherOptions {
  /** The system's root directory ("/" on a server). */
  root: string;
  clock: Clock;
  logger?: Logger;
  /** Called when there is a new inventory to send. */
  onChange?: () => void;
  /** How long an unchanged inventory stays fresh before its checkedAt is renewed (default an hour). */
  refreshMs?: number;
  /** A collection taking longer is abandoned (default 5 minutes). */
  timeoutMs?: number;
  /** Collects an inventory (default: in a worker thread). */
  collect?: (root: string, now: number) => Promise<BootInventory>;
}

/**
 * Keeps the agent's boot inventory current and says when the control plane
 * needs it. `check()` (at start, then every minute) compares a fingerprint
 * of everything the inventory reads — the names, sizes and times of /boot's
 * files, the boot loader configurations, os-release, each kernel's
 * modules.builtin and modules.dep — and collects anew only when it changed:
 * a new kernel, a regenerated initramfs, update-grub. Otherwise, once the
 * inventory is `refreshMs` old, only its checkedAt is renewed (the
 * fingerprint covers every input, so reading it again would find the same).
 *
 * `pending()` is the inventory to put in the next heartbeat, until `sent()`
 * says a heartbeat carrying it was accepted: a heartbeat carries it only when
 * it changed, or its checkedAt was renewed (about once an hour).
 */
export class BootWatcher {
  private current: BootInventory | null = null;
  private fingerprint: string | null = null;
  private sentOne: BootInventory | null = null;
  private running: Promise<void> | null = null;
  private worker: Worker | null = null;
  private closed = false;
  private readonly log: Logger;

  constructor(private readonly opts: BootWatcherOptions) {
    this.log = opts.logger ?? silentLogger;
  }

  /** The last inventory collected, if any. */
  get inventory(): BootInventory | null {
    return this.current;
  }

  /** Checks for changes, collecting when needed; concurrent calls share one check. Never throws. */
  check(): Promise<void> {
    this.running ??= this.checkOnce()
      .catch((err: unknown) => {
        if (!this.closed) this.log.warn({ err: String(err) }, "cannot take the boot inventory");
      })
      .finally(() => (this.running = null));
    return this.running;
  }

  pending(): BootInventory | undefined {
    return this.current !== null && this.current !== this.sentOne ? this.current : undefined;
  }

  /** A heartbeat carrying `inv` was accepted by the control plane. */
  sent(inv: BootInventory): void {
    this.sentOne = inv;
  }

  /** Stops a collection in progress; later checks do nothing. */
  async close(): Promise<void> {
    this.closed = true;
    await this.worker?.terminate();
    await this.running;
  }

  private async checkOnce(): Promise<void> {
    if (this.closed) return;
    const now = this.opts.clock.now();
    const fp = await bootFingerprint(this.opts.root);
    if (this.current !== null && fp === this.fingerprint) {
      if (now - Date.parse(this.current.checkedAt) < (this.opts.refreshMs ?? 3600_000)) return;
      this.current = { ...this.current, checkedAt: new Date(now).toISOString() };
      this.opts.onChange?.();
      return;
    }
    const started = Date.now();
    const inv = await (this.opts.collect ?? ((root, t) => this.inWorker(root, t)))(this.opts.root, now);
    if (this.closed) return;
    // The fingerprint from before reading: a change while reading shows at the next check.
    this.fingerprint = fp;
    this.current = inv;
    this.log.info(
      {
        kernels: inv.kernels.length,
        ready: Object.entries(inv.profiles)
          .filter(([, v]) => v.ready)
          .map(([p]) => p),
        ms: Date.now() - started,
      },
      "boot inventory taken",
    );
    this.opts.onChange?.();
  }

  private inWorker(root: string, now: number): Promise<BootInventory> {
    return new Promise((resolve, reject) => {
      const w = new Worker(new URL("./boot-inventory-worker.js", import.meta.url), {
        workerData: { root, now },
      });
      this.worker = w;
      const timer = setTimeout(() => void w.terminate(), this.opts.timeoutMs ?? 300_000);
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.worker = null;
        fn();
      };
      w.once("message", (m: { ok: true; inventory: BootInventory } | { ok: false; message: string }) => {
        settle(() => (m.ok ? resolve(m.inventory) : reject(new Error(m.message))));
        void w.terminate();
      });
      w.once("error", (err) => settle(() => reject(err)));
      w.once("exit", (code) =>
        settle(() =>
          reject(
            new LifeboatError("AGENT_IO", `the boot inventory stopped before it finished (exit ${code})`, {
              hint: "it is tried again at the next change of /boot, or within an hour",
            }),
          ),
        ),
      );
    });
  }
}

/**
 * What the inventory depends on, as one string: the size and modification
 * time of every file it may read. Cheap (a few dozen stat calls).
 */
export async function bootFingerprint(root: string): Promise<string> {
  const at = (p: string) => path.join(root, p);
  const stamp = async (p: string): Promise<string> => {
    const st = await fs.stat(at(p)).catch(() => null);
    return st ? `${p}:${st.size}:${st.mtimeMs}:${st.ino}` : `${p}:-`;
  };
  const names = async (p: string): Promise<string[]> =>
    (await fs.readdir(at(p)).catch(() => [] as string[])).sort().slice(0, 10_000);
  const parts: string[] = [];
  const boot = await names("/boot");
  for (const n of boot) parts.push(await stamp(`/boot/${n}`));
  for (const p of ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/etc/os-release", "/usr/lib/os-release"])
    parts.push(await stamp(p));
  for (const esp of ["/boot/efi", "/efi"])
    for (const d of await names(`${esp}/EFI`)) parts.push(await stamp(`${esp}/EFI/${d}/grub.cfg`));
  for (const e of (await names("/boot/loader/entries")).slice(0, 200))
    parts.push(await stamp(`/boot/loader/entries/${e}`));
  const versions = boot.map((n) => /^(?:vmlinuz|vmlinux|bzImage|Image|kernel)-(.+)$/.exec(n)?.[1]);
  for (const v of versions)
    if (v && !v.includes("/"))
      for (const f of ["modules.builtin", "modules.dep"])
        for (const dir of ["/lib/modules", "/usr/lib/modules"]) parts.push(await stamp(`${dir}/${v}/${f}`));
  return parts.join("\n");
}
