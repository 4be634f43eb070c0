/**
 * What a GRUB 2 configuration says about booting: the kernel of the first
 * menu entry (the default unless `set default` says otherwise; we do not
 * evaluate GRUB's script) and the root= it passes, and whether it reads
 * Boot Loader Specification entries (blscfg, RHEL 8 and later).
 */
export interface GrubConfig {
  /** Kernel file names (basename) of the `linux`/`linuxefi` lines, in order. */
  kernels: string[];
  /** The root= argument of the first such line, as written. */
  rootArg?: string;
  blscfg: boolean;
}

export function parseGrubConfig(text: string): GrubConfig {
  const kernels: string[] = [];
  let rootArg: string | undefined;
  let blscfg = false;
  for (const raw of text.split("\n").slice(0, 100_000)) {
    const line = raw.trim();
    if (line.startsWith("#")) continue;
    if (/^blscfg\b/.test(line)) blscfg = true;
    const m = /^(?:linux|linuxefi|linux16)\s+(\S+)(.*)$/.exec(line);
    if (!m) continue;
    kernels.push(m[1]!.split("/").pop()!);
    if (kernels.length === 1) rootArg = /(?:^|\s)root=(\S+)/.exec(m[2]!)?.[1];
  }
  return {
    kernels,
    ...(rootArg ? { rootArg } : {}),
    blscfg,
  };
}

/** A Boot Loader Specification entry (/boot/loader/entries/*.conf): its kernel and root=. */
export function parseBlsEntry(text: string): { kernel?: string; rootArg?: string } {
  const kernel = /^linux\s+(\S+)/m.exec(text)?.[1]?.split("/").pop();
  const options = /^options\s(.*)$/m.exec(text)?.[1] ?? "";
  const rootArg = /(?:^|\s)root=(\S+)/.exec(options)?.[1];
  return { ...(kernel ? { kernel } : {}), ...(rootArg ? { rootArg } : {}) };
}

/** Compares kernel versions the way people read them: 6.1.10 after 6.1.9. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? "";
    const y = pb[i] ?? "";
    if (x === y) continue;
    if (/^\d+$/.test(x) && /^\d+$/.test(y)) return Number(x) - Number(y);
    return x < y ? -1 : 1;
  }
  return 0;
}
