import { isIP } from "node:net";

/**
 * Turns a host name given for a server certificate into what @peculiar/x509
 * encodes correctly as an iPAddress SAN, or undefined when it is not an IP
 * address (then it is a DNS name).
 *
 * @peculiar/x509 parses IPv6 text itself and silently mis-encodes forms such
 * as `::ffff:10.0.0.1`, so addresses are parsed here (with Node deciding what
 * is an address) and handed over as eight full hex groups. `[::1]` is accepted
 * as `::1`; a zone (`fe80::1%eth0`) has no meaning in a certificate and is
 * refused by the caller.
 */
export function ipAddressForSan(host: string): string | undefined {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (bare.includes("%")) return undefined;
  const family = isIP(bare);
  if (family === 4)
    return bare
      .split(".")
      .map((p) => String(Number(p)))
      .join(".");
  if (family !== 6) return undefined;
  return groupsToText(ipv6Groups(bare));
}

function ipv6Groups(text: string): number[] {
  let head = text;
  const tail: number[] = [];
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[2]!.split(".").map(Number) as [number, number, number, number];
    head = dotted[1]!.endsWith("::") ? dotted[1]! : dotted[1]!.slice(0, -1);
    tail.push((a << 8) | b, (c << 8) | d);
  }
  const parse = (s: string): number[] => (s === "" ? [] : s.split(":").map((g) => parseInt(g, 16)));
  const [left, right] = head.includes("::") ? head.split("::") : [head, undefined];
  const l = parse(left ?? "");
  const r = [...parse(right ?? ""), ...tail];
  if (right === undefined) return [...l, ...r];
  return [...l, ...new Array<number>(8 - l.length - r.length).fill(0), ...r];
}

function groupsToText(groups: number[]): string {
  return groups.map((g) => g.toString(16)).join(":");
}
