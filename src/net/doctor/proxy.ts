import { TIMEOUT_ERRNO } from "./timeout.js";
import { type Socket, connect as tcpConnect } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { LifeboatError } from "../../base/index.js";
import { inIpv4Cidr, joinHostPort } from "./addresses.js";

/** The proxy variables as the environment has them (read by the CLI's environment module). */
export interface ProxyEnvironment {
  /** HTTPS_PROXY, else https_proxy. */
  httpsProxy?: string;
  /** NO_PROXY, else no_proxy. */
  noProxy?: string;
  /** HTTP_PROXY, else http_proxy: reported only; it never applies to https://. */
  httpProxy?: string;
}

export interface ProxyChoice {
  /** The proxy to tunnel through (HTTP CONNECT), or undefined to connect directly. */
  proxy?: URL;
  /** Where it came from: "--proxy", "HTTPS_PROXY", or undefined. */
  source?: string;
  /** The NO_PROXY entry that sends this host direct. */
  bypassedBy?: string;
}

/**
 * Whether a connection to host:port goes through a proxy: `--proxy` always;
 * else HTTPS_PROXY unless NO_PROXY names the host (`*`; a name or a domain,
 * with or without a leading dot, optionally with `:port`; an IPv4 address or
 * CIDR block), as curl reads them.
 */
export function chooseProxy(
  host: string,
  port: number,
  env: ProxyEnvironment,
  forced: string | undefined,
): ProxyChoice {
  if (forced !== undefined) return { proxy: parseProxyUrl(forced, "--proxy"), source: "--proxy" };
  if (!env.httpsProxy) return {};
  const bypass = noProxyMatch(host, port, env.noProxy ?? "");
  if (bypass !== undefined) return { source: "HTTPS_PROXY", bypassedBy: bypass };
  return { proxy: parseProxyUrl(env.httpsProxy, "HTTPS_PROXY"), source: "HTTPS_PROXY" };
}

function noProxyMatch(host: string, port: number, noProxy: string): string | undefined {
  const h = host.toLowerCase();
  for (const raw of noProxy.split(/[,\s]+/)) {
    const entry = raw.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") return entry;
    if (entry.includes("/")) {
      if (inIpv4Cidr(h, entry)) return entry;
      continue;
    }
    const m = /^(.*?)(?::(\d+))?$/.exec(entry.replace(/^\[(.*)\](:\d+)?$/, "$1$2"))!;
    const name = m[1]!.replace(/^\*?\./, "");
    if (m[2] !== undefined && Number(m[2]) !== port) continue;
    if (h === name || h.endsWith(`.${name}`)) return entry;
  }
  return undefined;
}

function parseProxyUrl(text: string, from: string): URL {
  let u: URL | undefined;
  try {
    u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`);
  } catch {
    u = undefined;
  }
  if (u === undefined || (u.protocol !== "http:" && u.protocol !== "https:") || u.hostname === "") {
    throw new LifeboatError("DOCTOR_PROXY_INVALID", `${from} ${redactProxy(text)} is not a proxy URL`, {
      hint: "Write the proxy as http://HOST:PORT (or http://USER:PASSWORD@HOST:PORT).",
      exitCode: 2,
    });
  }
  return u;
}

/** The proxy URL without its password, for reports and logs. */
export function redactProxy(proxy: string | URL): string {
  const text = String(proxy);
  return text.replace(/\/\/([^/@]*)@/, (_m, cred: string) => `//${cred.split(":")[0]}:***@`);
}

/**
 * Opens a TCP connection to host:port through `proxy` with HTTP CONNECT and
 * resolves with the tunnelled socket once the proxy answered 2xx.
 * DOCTOR_PROXY_REFUSED for another answer; connection errors as they come
 * (errno codes), a timeout as ETIMEDOUT.
 */
export function openTunnel(proxy: URL, host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const proxyPort = Number(proxy.port || (proxy.protocol === "https:" ? 443 : 80));
    const proxyHost = proxy.hostname.replace(/^\[|\]$/g, "");
    const socket: Socket =
      proxy.protocol === "https:"
        ? tlsConnect({ host: proxyHost, port: proxyPort, servername: proxyHost })
        : tcpConnect({ host: proxyHost, port: proxyPort });
    const timer = setTimeout(() => {
      socket.destroy(
        Object.assign(new Error(`no answer from the proxy in ${timeoutMs} ms`), { code: TIMEOUT_ERRNO }),
      );
    }, timeoutMs);
    const onError = (err: Error) => done(err);
    const done = (err: Error | null, s?: Socket) => {
      clearTimeout(timer);
      socket.removeAllListeners("data");
      socket.removeListener("error", onError);
      if (err) {
        socket.destroy();
        reject(err);
      } else resolve(s!);
    };
    socket.on("error", onError);
    socket.once(proxy.protocol === "https:" ? "secureConnect" : "connect", () => {
      const target = joinHostPort(host, port);
      const auth =
        proxy.username !== ""
          ? `Proxy-Authorization: Basic ${Buffer.from(
              `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`,
            ).toString("base64")}\r\n`
          : "";
      socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${auth}\r\n`);
    });
    let head = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > 16384) done(new Error("the proxy's answer to CONNECT is too long"));
        return;
      }
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(head.subarray(0, end).toString("latin1"));
      if (!status || !status[1]!.startsWith("2")) {
        const line = head.subarray(0, head.indexOf("\r\n")).toString("latin1");
        done(
          new LifeboatError(
            "DOCTOR_PROXY_REFUSED",
            `the proxy ${redactProxy(proxy)} answered CONNECT ${host}:${port} with "${line}"`,
            {
              hint: "Ask the proxy's administrators to allow CONNECT to this host and port (407: give the proxy's user and password in the URL), or bypass the proxy for it with NO_PROXY.",
            },
          ),
        );
        return;
      }
      const rest = head.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      socket.setTimeout(0);
      done(null, socket);
    });
  });
}
