import assert from "node:assert/strict";
import http from "node:http";
import type { EventView } from "../../src/control/events.js";

/** One server-sent-events stream read with node:http, as any HTTP client would read it. */
export interface SseStream {
  res: http.IncomingMessage;
  events: { id: number; data: EventView }[];
  /** Comment lines (`: keep-alive`), without the colon. */
  comments: string[];
  ended: () => boolean;
  until(done: () => boolean, what: string, ms?: number): Promise<void>;
  close(): void;
}

/** GETs `path` with `headers` (plus `Accept: text/event-stream`); resolves with the response, read as it comes. */
export async function openSse(
  port: number,
  path: string,
  headers: Record<string, string>,
): Promise<SseStream> {
  const req = http.get({
    host: "127.0.0.1",
    port,
    path,
    headers: { ...headers, accept: "text/event-stream" },
  });
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once("response", resolve).once("error", reject);
  });
  req.on("error", () => undefined);
  const events: SseStream["events"] = [];
  const comments: string[] = [];
  let buffer = "";
  let ended = false;
  const waiters: (() => void)[] = [];
  res.setEncoding("utf8");
  res.on("data", (chunk: string) => {
    buffer += chunk;
    let cut: number;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) if (line.startsWith(":")) comments.push(line.slice(1).trim());
      const id = /^id: (\d+)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (id !== undefined && data !== undefined)
        events.push({ id: Number(id), data: JSON.parse(data) as EventView });
    }
    waiters.splice(0).forEach((w) => w());
  });
  const finish = () => {
    ended = true;
    waiters.splice(0).forEach((w) => w());
  };
  res.on("end", finish).on("close", finish).on("error", finish);
  return {
    res,
    events,
    comments,
    ended: () => ended,
    async until(done, what, ms = 10_000) {
      const deadline = Date.now() + ms;
      while (!done()) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
    close: () => req.destroy(),
  };
}

/** The body of a refused (non-stream) answer. */
export async function bodyOf(res: http.IncomingMessage): Promise<string> {
  let text = "";
  res.setEncoding("utf8");
  for await (const chunk of res) text += chunk as string;
  return text;
}
