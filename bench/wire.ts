/**
 * Wire throughput over loopback TLS 1.3, to set beside DESIGN.md's fact
 * (~550–650 MB/s of raw TLS on one connection, bound by the receiving event
 * loop). The receiver runs in a child process, as a replicator would:
 *
 *   raw    bytes written to a TLS socket and counted on arrival (the ceiling);
 *   wire   BLOCKS frames of raw 64 KiB blocks through an AgentSession to a
 *          WireServer on a fastify HTTPS listener (ALPN lifeboat-wire/1),
 *          applied at once and acknowledged; timed until the last ACK.
 *
 *   npm run build && node dist/bench/wire.js [--mib 2048] [--blocks-per-frame 16,1]
 *
 * Block data and hashes are made before timing: this measures framing,
 * checksums, the session layer and TLS, not hashing or compression.
 */
import { fork } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { type TLSSocket, connect, createServer } from "node:tls";
import { parseArgs } from "node:util";
import Fastify from "fastify";
import { systemClock } from "../src/base/index.js";
import {
  createCa,
  generateKeyAndCsr,
  issueClientCert,
  issueServerCert,
  serverTlsOptions,
  verifyClientCertificate,
} from "../src/net/index.js";
import {
  AgentSession,
  type SequencedMessage,
  WireServer,
  attachWire,
  connectWire,
  wireConnectionHandler,
} from "../src/wire/index.js";

const BLOCK = 65536;
const MiB = 1 << 20;

interface Certs {
  ca: string;
  cert: string;
  key: string;
  clientCert: string;
  clientKey: string;
}

type Mode = "raw" | "wire";

/** Child: listens, reports its port, and for raw mode the time the last byte arrived. */
async function serve(mode: Mode, certs: Certs, total: number): Promise<void> {
  // A normal exit on kill, so `node --cpu-prof` profiles of the receiver get written.
  process.on("SIGTERM", () => process.exit(0));
  const tls = serverTlsOptions({ certPem: certs.cert, keyPem: certs.key, caPem: certs.ca });
  if (mode === "raw") {
    const server = createServer(tls, (socket) => {
      let got = 0;
      socket.on("data", (d: Buffer) => {
        got += d.length;
        if (got >= total) {
          process.send!({ done: true });
          socket.end();
        }
      });
    });
    server.listen(0, "127.0.0.1", () => {
      const a = server.address();
      process.send!({ port: typeof a === "object" && a ? a.port : 0 });
    });
    return;
  }
  const app = Fastify({ https: tls });
  const wire = new WireServer({
    accept: () => ({ apply: () => Promise.resolve() }),
    window: { frames: 256, bytes: 32 * MiB },
  });
  attachWire(
    app.server,
    wireConnectionHandler(wire, async (socket: TLSSocket) => {
      const id = await verifyClientCertificate(socket, {
        caPem: certs.ca,
        isRevoked: () => false,
        clock: systemClock,
      });
      return { id: `${id.role}:${id.subjectId}` };
    }),
  );
  await app.listen({ host: "127.0.0.1", port: 0 });
  const a = app.server.address();
  process.send!({ port: typeof a === "object" && a ? a.port : 0 });
}

function child(mode: Mode, certs: Certs, total: number) {
  const proc = fork(process.argv[1]!, ["--serve", mode, "--total", String(total)], { stdio: "inherit" });
  proc.send(certs);
  const messages: ((m: { port?: number; done?: boolean }) => void)[] = [];
  proc.on("message", (m: { port?: number; done?: boolean }) => messages.shift()?.(m));
  const next = () => new Promise<{ port?: number; done?: boolean }>((r) => messages.push(r));
  return { proc, next };
}

async function benchRaw(certs: Certs, total: number): Promise<number> {
  const c = child("raw", certs, total);
  const { port } = await c.next();
  const done = c.next();
  const socket = connect({
    host: "127.0.0.1",
    port: port!,
    ca: certs.ca,
    minVersion: "TLSv1.3",
    cert: certs.clientCert,
    key: certs.clientKey,
  });
  await new Promise((r) => socket.once("secureConnect", r));
  const chunk = randomBytes(MiB);
  const t0 = process.hrtime.bigint();
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!socket.write(chunk)) await new Promise((r) => socket.once("drain", r));
  }
  await done;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  socket.destroy();
  c.proc.kill();
  return total / MiB / secs;
}

async function benchWire(
  certs: Certs,
  total: number,
  perFrame: number,
): Promise<{ mbps: number; frames: number }> {
  const c = child("wire", certs, total);
  const { port } = await c.next();
  const session = new AgentSession({
    connect: () =>
      connectWire({
        host: "127.0.0.1",
        port: port!,
        caPem: certs.ca,
        certPem: certs.clientCert,
        keyPem: certs.clientKey,
      }),
    agent: { serverId: "bench", hostname: "bench", version: "bench" },
    disks: [{ index: 0, id: "bench", sizeBytes: 2 ** 40, blockSize: BLOCK }],
    window: { frames: 256, bytes: 32 * MiB },
  });
  await session.start();
  // 64 distinct blocks, reused: their bytes and hashes are ready before the clock starts.
  const blocks = Array.from({ length: 64 }, () => {
    const data = randomBytes(BLOCK);
    return { encoding: "raw" as const, sha256: createHash("sha256").update(data).digest(), data };
  });
  const frames = Math.ceil(total / (BLOCK * perFrame));
  const t0 = process.hrtime.bigint();
  let last = 0;
  for (let i = 0; i < frames; i++) {
    const msg: SequencedMessage = {
      type: "BLOCKS",
      disk: 0,
      offset: ((i * perFrame) % (1 << 20)) * BLOCK,
      kind: "blocks",
      blocks: Array.from({ length: perFrame }, (_, j) => blocks[(i * perFrame + j) % 64]!),
    };
    last = await session.send(msg);
  }
  await session.whenAcked(last);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await session.close();
  c.proc.kill();
  return { mbps: (frames * perFrame * BLOCK) / MiB / secs, frames };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      serve: { type: "string" },
      total: { type: "string" },
      mib: { type: "string", default: "2048" },
      "blocks-per-frame": { type: "string", default: "16,1" },
    },
  });
  if (values.serve) {
    const certs = await new Promise<Certs>((r) => process.once("message", (m) => r(m as Certs)));
    await serve(values.serve as Mode, certs, Number(values.total));
    return;
  }
  const total = Number(values.mib) * MiB;
  const ca = await createCa({ commonName: "Lifeboat CA bench" });
  const server = await issueServerCert(ca, { hostnames: ["127.0.0.1"] });
  const { keyPem, csrPem } = await generateKeyAndCsr({ commonName: "bench" });
  const client = await issueClientCert(ca, csrPem, { role: "agent", subjectId: "bench" });
  const certs: Certs = {
    ca: ca.certPem,
    cert: server.certPem,
    key: server.keyPem,
    clientCert: client.certPem,
    clientKey: keyPem,
  };
  console.log(
    `wire benchmark: ${values.mib} MiB per run, loopback TLS 1.3, receiver in a child process, node ${process.version}`,
  );
  console.log(`raw TLS                          ${(await benchRaw(certs, total)).toFixed(0)} MiB/s`);
  for (const n of values["blocks-per-frame"].split(",").map(Number)) {
    const r = await benchWire(certs, total, n);
    console.log(
      `wire, ${String(n).padStart(2)} x 64 KiB blocks/frame    ${r.mbps.toFixed(0)} MiB/s of block data (${r.frames} frames)`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
