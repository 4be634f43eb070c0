import { isIP } from "node:net";
import { LifeboatError } from "../../base/index.js";

export interface Endpoint {
  /** The URL as given, without a trailing slash. */
  url: string;
  /** Host name or address, without IPv6 brackets. */
  host: string;
  port: number;
}

/** https://HOST[:PORT][/] → host and port (443 by default); USAGE otherwise. */
export function parseEndpoint(text: string): Endpoint {
  let u: URL | undefined;
  try {
    u = new URL(text);
  } catch {
    u = undefined;
  }
  if (u === undefined || u.protocol !== "https:" || (u.pathname !== "/" && u.pathname !== "") || u.search) {
    throw new LifeboatError("USAGE", `--endpoint ${text} is not https://HOST:PORT`, {
      hint: "Give the control plane's address as the agent would: https://HOST:PORT, without a path.",
      exitCode: 2,
    });
  }
  return {
    url: `${u.protocol}//${u.host}`,
    host: u.hostname.replace(/^\[|\]$/g, ""),
    port: Number(u.port || 443),
  };
}

/** host:port (IPv6 in brackets) → host and port; USAGE otherwise. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d{1,5})$/.exec(text.trim());
  if (!m || m[1] === "") {
    throw new LifeboatError("USAGE", `${text} is not HOST:PORT`, { exitCode: 2 });
  }
  return { host: m[1]!, port: Number(m[2]) };
}

/** `host:port`, with IPv6 addresses in brackets. */
export function joinHostPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

/**
 * True for addresses that do not route on the internet: RFC 1918, shared
 * address space (100.64/10, which carrier and VPN networks use), loopback,
 * link-local, and IPv6 unique-local, link-local and loopback (IPv4-mapped
 * IPv6 as its IPv4 address). Everything else counts as public.
 */
export function isPrivateAddress(address: string): boolean {
  const bare = address.replace(/%.*$/, "");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped) return isPrivateAddress(mapped[1]!);
  if (isIP(bare) === 4) {
    const [a = 0, b = 0] = bare.split(".").map(Number);
    return (
      a === 10 ||
      a === 127 ||
      (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) ||
      (a === 100 && b >= 64 && b <= 127) ||
      (a === 169 && b === 254)
    );
  }
  if (isIP(bare) === 6) {
    const lower = bare.toLowerCase();
    if (lower === "::1") return true;
    const first = parseInt(lower.split(":")[0] || "0", 16);
    return (first & 0xfe00) === 0xfc00 || (first & 0xffc0) === 0xfe80;
  }
  return false;
}

/** True when IPv4 `address` lies in `cidr` (a.b.c.d/n); false for anything else. */
export function inIpv4Cidr(address: string, cidr: string): boolean {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(cidr);
  if (!m || isIP(address) !== 4 || isIP(m[1]!) !== 4) return false;
  const bits = Number(m[2]);
  if (bits > 32) return false;
  const n = (ip: string) => ip.split(".").reduce((acc, p) => acc * 256 + Number(p), 0);
  const size = 2 ** (32 - bits);
  return Math.floor(n(address) / size) === Math.floor(n(m[1]!) / size);
}
