import { isIP } from "node:net";
import { LifeboatError } from "../../base/index.js";

export interface AddressMapping {
  from: string;
  to: string;
}

/** Replacements made in one text: "from → to" with how often. */
export type Replacements = Map<string, number>;

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** LAUNCH_COPY_BAD_OPTION for a host name or an address mapping that cannot be applied as asked. */
export function checkMappingOptions(hostname: string | undefined, addresses: AddressMapping[]): void {
  const bad = (message: string, hint: string) =>
    new LifeboatError("LAUNCH_COPY_BAD_OPTION", message, { hint });
  if (hostname !== undefined && !HOSTNAME.test(hostname))
    throw bad(
      `${JSON.stringify(hostname)} is not a host name`,
      "give letters, digits and hyphens, with dots between labels (sap01-drill, sap01-drill.example.com)",
    );
  const seen = new Set<string>();
  for (const m of addresses) {
    for (const a of [m.from, m.to])
      if (isIP(a) === 0)
        throw bad(
          `${JSON.stringify(a)} in the address mapping is not an IP address`,
          "map single addresses (10.0.0.5 to 192.168.7.5), not networks or names",
        );
    if (isIP(m.from) !== isIP(m.to))
      throw bad(
        `the address mapping ${m.from} → ${m.to} changes the address family`,
        "map IPv4 to IPv4 and IPv6 to IPv6",
      );
    const key = m.from.toLowerCase();
    if (seen.has(key))
      throw bad(`the address mapping names ${m.from} twice`, "give each source address once");
    seen.add(key);
  }
}

/**
 * Matches the exact address token: not inside a longer address or name
 * (10.0.0.1 does not hit 10.0.0.12, 110.0.0.1 or 10.0.0.1.5; fe80::1 does not
 * hit fe80::1:2). A prefix length, a separator, and after an IPv4 address a
 * port (":8080"), may follow.
 */
function addressPattern(addresses: string[]): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const group = (family: number) =>
    addresses
      .filter((a) => isIP(a) === family)
      .sort((a, b) => b.length - a.length)
      .map(esc)
      .join("|");
  const v4 = group(4);
  const v6 = group(6);
  const parts = [
    ...(v4 ? [`(?<![0-9A-Za-z.])(?:${v4})(?![0-9A-Za-z]|\\.[0-9A-Za-z])`] : []),
    ...(v6 ? [`(?<![0-9A-Za-z.:])(?:${v6})(?![0-9A-Za-z:]|\\.[0-9A-Za-z])`] : []),
  ];
  return new RegExp(parts.join("|"), "gi");
}

/** Replaces every address token of the mapping at once (a swap a→b, b→a works). */
export function replaceAddresses(
  text: string,
  mapping: AddressMapping[],
): { text: string; replaced: Replacements } {
  const replaced: Replacements = new Map();
  if (mapping.length === 0) return { text, replaced };
  const to = new Map(mapping.map((m) => [m.from.toLowerCase(), m]));
  const out = text.replace(addressPattern(mapping.map((m) => m.from)), (hit) => {
    const m = to.get(hit.toLowerCase())!;
    const key = `${m.from} → ${m.to}`;
    replaced.set(key, (replaced.get(key) ?? 0) + 1);
    return m.to;
  });
  return { text: out, replaced };
}

/**
 * Renames the host in an /etc/hosts text: among the names of each entry (not
 * the address, not comments), the old name becomes the new one, its short
 * form the new short form, and a qualified form of the short name
 * (`sap01.corp.example`) keeps its domain (`sap01-drill.corp.example`).
 */
export function renameInHosts(
  text: string,
  oldName: string,
  newName: string,
): { text: string; count: number } {
  const oldShort = oldName.split(".")[0]!.toLowerCase();
  const newShort = newName.split(".")[0]!;
  let count = 0;
  const rename = (name: string): string => {
    const low = name.toLowerCase();
    if (low === oldName.toLowerCase()) return newName;
    if (low === oldShort) return newShort;
    if (low.startsWith(`${oldShort}.`)) return newShort + name.slice(oldShort.length);
    return name;
  };
  const lines = text.split("\n").map((line) => {
    const hash = line.indexOf("#");
    const body = hash < 0 ? line : line.slice(0, hash);
    const comment = hash < 0 ? "" : line.slice(hash);
    let field = 0;
    const renamed = body.replace(/(\s*)(\S+)/g, (all, space: string, token: string) => {
      if (field++ === 0) return all;
      const n = rename(token);
      if (n !== token) count++;
      return space + n;
    });
    return renamed + comment;
  });
  return { text: lines.join("\n"), count };
}

export function describeReplacements(r: Replacements): string {
  return [...r].map(([k, n]) => (n === 1 ? k : `${k} ×${n}`)).join(", ");
}
