/**
 * A TCP proxy for fault tests: listens on loopback port 0 and forwards each
 * connection to `target`, until told to fail.
 *
 *  - `cut("drop")` resets every connection and refuses new ones (the peer
 *    sees the link go at once);
 *  - `cut("blackhole")` keeps connections open but forwards nothing either
 *    way, and new connections are accepted and never answered (the peer
 *    learns only from its own timeouts and heartbeats);
 *  - `restore()` forwards again; connections that lost bytes to a blackhole
 *    are closed, since their streams are broken.
 */
import net from "node:net";

export type CutMode = "drop" | "blackhole";

export interface FaultProxy {
  port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  cut(mode: CutMode): void;
  restore(): void;
  close(): Promise<void>;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket | undefined;
  /** Bytes were thrown away: the stream cannot be used again. */
  broken: boolean;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  let mode: CutMode | undefined;
  let accepted = 0;
  const pairs = new Set<Pair>();
  const drop = (p: Pair): void => {
    p.client.destroy();
    p.upstream?.destroy();
    pairs.delete(p);
  };
  const server = net.createServer((client) => {
    accepted++;
    const pair: Pair = { client, upstream: undefined, broken: false };
    pairs.add(pair);
    client.on("error", () => drop(pair));
    client.on("close", () => drop(pair));
    if (mode === "drop") {
      client.resetAndDestroy();
      return;
    }
    if (mode === "blackhole") {
      pair.broken = true;
      client.on("data", () => undefined);
      return;
    }
    const upstream = net.connect(target);
    pair.upstream = upstream;
    upstream.on("error", () => drop(pair));
    upstream.on("close", () => drop(pair));
    // Forward unless blackholed; a blackhole swallows what arrives.
    client.on("data", (b: Buffer) => {
      if (mode === "blackhole") pair.broken = true;
      else upstream.write(b);
    });
    upstream.on("data", (b: Buffer) => {
      if (mode === "blackhole") pair.broken = true;
      else client.write(b);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get accepted() {
      return accepted;
    },
    cut(m) {
      mode = m;
      if (m === "drop")
        for (const p of [...pairs]) {
          p.client.resetAndDestroy();
          p.upstream?.destroy();
          pairs.delete(p);
        }
    },
    restore() {
      mode = undefined;
      for (const p of [...pairs]) if (p.broken) drop(p);
    },
    async close() {
      for (const p of [...pairs]) drop(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
