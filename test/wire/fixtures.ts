/**
 * Wire test fixtures: the product's listener (fastify over HTTPS built with
 * serverTlsOptions, real certificates from a test CA) with the wire attached
 * beside HTTP; agent credentials; and a TCP proxy that cuts connections or
 * freezes them (a black hole: sockets stay open, nothing passes), for resume
 * and half-open tests.
 */
import { createHash, randomBytes } from "node:crypto";
import { type Socket, type Server as NetServer, connect as netConnect, createServer } from "node:net";
import type { TLSSocket } from "node:tls";
import Fastify, { type FastifyInstance } from "fastify";
import { systemClock } from "../../src/base/index.js";
import {
  type CaCredentials,
  createCa,
  generateKeyAndCsr,
  issueClientCert,
  issueServerCert,
  serverTlsOptions,
  verifyClientCertificate,
} from "../../src/net/index.js";
import {
  AgentSession,
  type AgentSessionOptions,
  type DiskInfo,
  type HeartbeatSettings,
  type SequencedMessage,
  type ServerConnection,
  type StreamHandlers,
  type WindowLimits,
  WireServer,
  attachWire,
  connectWire,
  wireConnectionHandler,
} from "../../src/wire/index.js";

export interface Credentials {
  certPem: string;
  keyPem: string;
}

export async function agentCredentials(ca: CaCredentials, subjectId: string): Promise<Credentials> {
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: subjectId });
  const cert = await issueClientCert(ca, csrPem, { role: "agent", subjectId });
  return { certPem: cert.certPem, keyPem };
}

export interface TestWireServer {
  ca: CaCredentials;
  app: FastifyInstance;
  wire: WireServer;
  port: number;
  close(): Promise<void>;
}

export async function startWireServer(opts: {
  ca?: CaCredentials;
  /** Either handlers for a WireServer made here, or a WireServer of the caller's (e.g. a Replicator's). */
  handlers?: (peerId: string, connection: ServerConnection) => StreamHandlers | Promise<StreamHandlers>;
  wire?: WireServer;
  /** Listen on this port (default: any free one). */
  port?: number;
  window?: WindowLimits;
  heartbeat?: HeartbeatSettings;
  versions?: number[];
}): Promise<TestWireServer> {
  const ca = opts.ca ?? (await createCa({ commonName: "Lifeboat CA wire test" }));
  const cert = await issueServerCert(ca, { hostnames: ["127.0.0.1", "localhost"] });
  // No alpnProtocols here: attachWire adds lifeboat-wire/1 to the listener fastify built.
  const app = Fastify({
    https: serverTlsOptions({ certPem: cert.certPem, keyPem: cert.keyPem, caPem: ca.certPem }),
  });
  app.get("/healthz", () => ({ ok: true }));
  const handlers = opts.handlers;
  const wire =
    opts.wire ??
    new WireServer({
      accept: (_hello, peer, connection) => {
        if (!handlers) throw new Error("startWireServer needs handlers or a wire server");
        return handlers(peer.id, connection);
      },
      ...(opts.window ? { window: opts.window } : {}),
      ...(opts.heartbeat ? { heartbeat: opts.heartbeat } : {}),
      ...(opts.versions ? { versions: opts.versions } : {}),
    });
  attachWire(
    app.server,
    wireConnectionHandler(wire, async (socket: TLSSocket) => {
      const id = await verifyClientCertificate(socket, {
        caPem: ca.certPem,
        isRevoked: () => false,
        clock: systemClock,
      });
      return { id: `${id.role}:${id.subjectId}` };
    }),
  );
  await app.listen({ host: "127.0.0.1", port: opts.port ?? 0 });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    ca,
    app,
    wire,
    port,
    close: async () => {
      wire.close();
      await app.close();
    },
  };
}

export const DISK: DiskInfo = { index: 0, id: "vda", sizeBytes: 64 << 20, blockSize: 65536 };

/** A BLOCKS message of `n` raw blocks of DISK's size, of random bytes, at block `first`. */
export function randomBlocks(first: number, n: number): SequencedMessage {
  return {
    type: "BLOCKS",
    disk: 0,
    offset: first * DISK.blockSize,
    kind: "blocks",
    blocks: Array.from({ length: n }, () => {
      const data = randomBytes(DISK.blockSize);
      return { encoding: "raw" as const, sha256: createHash("sha256").update(data).digest(), data };
    }),
  };
}

export function agentSession(
  server: TestWireServer,
  creds: Credentials,
  over: Partial<AgentSessionOptions> & { port?: number } = {},
): AgentSession {
  const { port, ...rest } = over;
  return new AgentSession({
    connect: () =>
      connectWire({ host: "127.0.0.1", port: port ?? server.port, caPem: server.ca.certPem, ...creds }),
    agent: { serverId: "srv-1", hostname: "db1", version: "test" },
    disks: [DISK],
    backoff: { minMs: 10, maxMs: 100 },
    ...rest,
  });
}

export interface TestProxy {
  port: number;
  /** Connections made through the proxy so far. */
  accepted: number;
  /** Resets every open connection. */
  cut(): void;
  /** Open connections stop passing bytes either way, and stay open. New connections pass. */
  freeze(): void;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<TestProxy> {
  const pairs = new Set<{ a: Socket; b: Socket; frozen: boolean }>();
  const proxy: TestProxy = {
    port: 0,
    accepted: 0,
    cut: () => {
      for (const p of pairs) {
        p.frozen = false;
        p.a.resetAndDestroy();
        p.b.resetAndDestroy();
      }
      pairs.clear();
    },
    freeze: () => {
      for (const p of pairs) p.frozen = true;
    },
    close: () => {
      proxy.cut();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  const server: NetServer = createServer((a) => {
    proxy.accepted++;
    const b = netConnect(targetPort, "127.0.0.1");
    const pair = { a, b, frozen: false };
    pairs.add(pair);
    a.on("data", (d: Buffer) => void (pair.frozen || b.write(d)));
    b.on("data", (d: Buffer) => void (pair.frozen || a.write(d)));
    const end = () => {
      // A frozen pair is a black hole: one side closing is not passed on either.
      if (pair.frozen) return;
      pairs.delete(pair);
      a.destroy();
      b.destroy();
    };
    a.on("close", end).on("error", end);
    b.on("close", end).on("error", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  proxy.port = typeof address === "object" && address ? address.port : 0;
  return proxy;
}
