/** What /etc/os-release says about the installed system (freedesktop.org os-release format). */
export interface OsInfo {
  id: string;
  idLike: string[];
  name: string;
  versionId?: string;
  prettyName?: string;
}

export type OsFamily = "debian" | "redhat" | "suse" | "unknown";

export function parseOsRelease(text: string): OsInfo {
  const v: Record<string, string> = {};
  for (const raw of text.split("\n").slice(0, 1000)) {
    const m = /^\s*([A-Z0-9_]+)=(.*)$/.exec(raw);
    if (!m) continue;
    let value = m[2]!.trim();
    const q = value[0];
    if ((q === '"' || q === "'") && value.endsWith(q) && value.length >= 2)
      value = value.slice(1, -1).replace(/\\(["'`$\\])/g, "$1");
    v[m[1]!] = value.slice(0, 256);
  }
  return {
    id: (v.ID ?? "linux").toLowerCase(),
    idLike: (v.ID_LIKE ?? "").toLowerCase().split(/\s+/).filter(Boolean),
    name: v.NAME ?? "Linux",
    ...(v.VERSION_ID ? { versionId: v.VERSION_ID } : {}),
    ...(v.PRETTY_NAME ? { prettyName: v.PRETTY_NAME } : {}),
  };
}

export function osFamily(os: OsInfo | null): OsFamily {
  if (!os) return "unknown";
  const ids = [os.id, ...os.idLike];
  if (ids.some((i) => i === "debian" || i === "ubuntu")) return "debian";
  if (ids.some((i) => /^(suse|sles|opensuse)/.test(i))) return "suse";
  if (ids.some((i) => ["rhel", "fedora", "centos", "rocky", "almalinux", "ol", "amzn"].includes(i)))
    return "redhat";
  return "unknown";
}
