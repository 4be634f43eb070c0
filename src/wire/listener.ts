import type { Server as TlsServer, TLSSocket } from "node:tls";
import { LifeboatError } from "../base/index.js";
import type { WirePeer, WireServer } from "./wire-server.js";

/** The ALPN protocol id of the wire, offered beside `http/1.1` on the product's one TLS port. */
export const WIRE_ALPN = "lifeboat-wire/1";

/**
 * Puts the wire on an existing TLS listener (fastify's `app.server`, any
 * https.Server or tls.Server), so the data path and the API share one port.
 *
 * Why ALPN and not an HTTP upgrade: the protocol is chosen inside the TLS
 * handshake, before any HTTP parser sees a byte, so a wire connection never
 * goes through fastify's request timeouts, header limits or body parsing, and
 * costs no extra round trip; a client that offers only `lifeboat-wire/1` to
 * a server that does not speak it fails at the handshake with a clear alert
 * instead of getting an HTTP answer. The price: load balancers must pass TCP
 * through (DESIGN.md says they must anyway, for mutual TLS).
 *
 * What it does: adds `lifeboat-wire/1` to the server's ALPN list (after the
 * protocols it has, `http/1.1` first when it had none), and takes over the
 * server's 'secureConnection' listeners: a connection whose negotiated
 * protocol is the wire goes to `onConnection`; every other connection goes
 * to the listeners that were there (https.Server's HTTP handling), as before.
 * Attach after the server is built and before it accepts connections;
 * 'secureConnection' listeners added later see wire connections too.
 * `detach()` restores the listeners (the ALPN entry stays).
 *
 * The ALPN list is set through the server's `ALPNProtocols` property (what
 * tls.Server made of its option), as Node 20 to 24 keep it; a server built
 * with an ALPNCallback cannot be extended and is refused.
 */
export function attachWire(server: TlsServer, onConnection: (socket: TLSSocket) => void): { detach(): void } {
  addAlpnProtocol(server, WIRE_ALPN);
  const previous = server.listeners("secureConnection") as ((socket: TLSSocket) => void)[];
  server.removeAllListeners("secureConnection");
  const route = (socket: TLSSocket): void => {
    if (socket.alpnProtocol === WIRE_ALPN) {
      onConnection(socket);
      return;
    }
    for (const l of previous) l.call(server, socket);
  };
  server.on("secureConnection", route);
  return {
    detach: () => {
      server.removeListener("secureConnection", route);
      for (const l of previous) server.on("secureConnection", l);
    },
  };
}

/**
 * The usual `onConnection` for attachWire: `authorize` decides who the
 * client is from its TLS socket (the replicator passes net's
 * verifyClientCertificate with its CA and revocation list) and throws a
 * LifeboatError to refuse; a refused client gets an ERROR frame with that
 * error's code and the connection is closed. Authorized connections run
 * the protocol in `wire`.
 */
export function wireConnectionHandler(
  wire: WireServer,
  authorize: (socket: TLSSocket) => Promise<WirePeer> | WirePeer,
): (socket: TLSSocket) => void {
  return (socket) => {
    socket.setNoDelay(true);
    // Frames may arrive while authorization is decided; hold them until the protocol runs.
    socket.pause();
    Promise.resolve()
      .then(() => authorize(socket))
      .then(
        (peer) => {
          wire.handle(socket, peer);
          socket.resume();
        },
        (err: unknown) => {
          wire.refuse(
            socket,
            err instanceof LifeboatError
              ? err
              : new LifeboatError("WIRE_UNAUTHORIZED", "the wire connection could not be authorized", {
                  hint: "Agents and replicators present the client certificate they received at registration; check the agent's certificate and the replicator's log.",
                  cause: err,
                }),
          );
          socket.resume();
        },
      );
  };
}

/** Parses and rewrites the length-prefixed ALPN list Node keeps on a tls.Server. */
function addAlpnProtocol(server: TlsServer, protocol: string): void {
  const s = server as TlsServer & { ALPNProtocols?: Buffer; ALPNCallback?: unknown };
  if (s.ALPNCallback) {
    throw new LifeboatError(
      "WIRE_LISTENER_UNSUPPORTED",
      "the TLS listener chooses ALPN with a callback; the wire cannot be added to it",
      {
        hint: `Build the listener with ALPNProtocols (serverTlsOptions({ alpnProtocols: ["${protocol}"] })) instead of an ALPNCallback.`,
      },
    );
  }
  const list: string[] = [];
  const raw = s.ALPNProtocols;
  for (let at = 0; raw && at < raw.length;) {
    const n = raw[at]!;
    list.push(raw.subarray(at + 1, at + 1 + n).toString("latin1"));
    at += 1 + n;
  }
  if (list.includes(protocol)) return;
  if (list.length === 0) list.push("http/1.1");
  list.push(protocol);
  s.ALPNProtocols = Buffer.concat(
    list.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, "latin1")])),
  );
}
