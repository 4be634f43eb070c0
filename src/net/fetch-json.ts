import { type Dispatcher, request } from "undici";
import { LifeboatError } from "../base/index.js";
import { toNetError } from "./net-errors.js";

export interface FetchJsonOptions {
  method?: Dispatcher.HttpMethod;
  headers?: Record<string, string>;
  /** A value to send as JSON, or a string / bytes sent as they are. */
  body?: unknown;
  /** Longest wait for the response headers, then between body chunks (ms); default 30 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Responses larger than this are refused: the API answers with small JSON documents and chunk batches of at most 8 MiB. */
const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

/**
 * One request to Lifeboat's API. Resolves to the parsed JSON body of a 2xx
 * response (undefined for an empty one). Throws:
 *  - for a non-2xx response, a LifeboatError built from the server's
 *    `{code, message, hint}` body, or NET_HTTP_<status> when the body has no
 *    code (retryable for 408, 429 and 5xx);
 *  - NET_BAD_RESPONSE for a 2xx body that is not JSON or is too large;
 *  - for a failed connection, what toNetError() makes of it (NET_UNREACHABLE,
 *    NET_TIMEOUT, NET_CONNECTION_LOST, NET_TLS_FAILED, NET_CA_MISMATCH,
 *    NET_SERVER_NAME_MISMATCH).
 * The caller validates the shape of what it gets.
 */
export async function fetchJson<T = unknown>(
  dispatcher: Dispatcher,
  url: string | URL,
  opts: FetchJsonOptions = {},
): Promise<T> {
  const { status, body, target } = await send(dispatcher, url, opts, "application/json");
  const text = body.toString("utf8");
  if (status >= 200 && status < 300) return parseBody(text, status, target) as T;
  throw httpError(status, text, target);
}

/** Like fetchJson, for an endpoint that answers bytes (application/octet-stream): the body of a 2xx response. */
export async function fetchBytes(
  dispatcher: Dispatcher,
  url: string | URL,
  opts: FetchJsonOptions = {},
): Promise<Buffer> {
  const { status, body, target } = await send(dispatcher, url, opts, "application/octet-stream");
  if (status >= 200 && status < 300) return body;
  throw httpError(status, body.toString("utf8"), target);
}

async function send(
  dispatcher: Dispatcher,
  url: string | URL,
  opts: FetchJsonOptions,
  accept: string,
): Promise<{ status: number; body: Buffer; target: string }> {
  const target = String(url);
  const headers: Record<string, string> = { accept, ...opts.headers };
  let body: string | Uint8Array | undefined;
  if (typeof opts.body === "string" || opts.body instanceof Uint8Array) body = opts.body;
  else if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    if (!Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
      headers["content-type"] = "application/json";
    }
  }
  const timeout = opts.timeoutMs ?? 30_000;
  try {
    const res = await request(url, {
      dispatcher,
      method: opts.method ?? (body === undefined ? "GET" : "POST"),
      headers,
      body,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      signal: opts.signal,
    });
    return { status: res.statusCode, body: await readCapped(res.body, target), target };
  } catch (err) {
    throw toNetError(err, target);
  }
}

async function readCapped(body: Dispatcher.ResponseData["body"], target: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > MAX_RESPONSE_BYTES) {
      body.destroy();
      throw new LifeboatError("NET_BAD_RESPONSE", `${target} sent more than ${MAX_RESPONSE_BYTES} bytes`, {
        hint: "Check that the endpoint is a Lifeboat server.",
      });
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function parseBody(text: string, status: number, target: string): unknown {
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new LifeboatError("NET_BAD_RESPONSE", `${target} answered ${status} with a body that is not JSON`, {
      hint: "Check that the endpoint is a Lifeboat server and no proxy answers in its place.",
      cause: err,
    });
  }
}

function httpError(status: number, text: string, target: string): LifeboatError {
  const retryable = status === 408 || status === 429 || status >= 500;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const e = (parsed ?? {}) as { code?: unknown; message?: unknown; hint?: unknown };
  const message =
    typeof e.message === "string" ? e.message : `${target} answered HTTP ${status}${snippet(text)}`;
  const hint = typeof e.hint === "string" ? e.hint : "";
  if (typeof e.code === "string" && /^[A-Z][A-Z0-9_]*$/.test(e.code)) {
    return new LifeboatError(e.code, message, { hint, retryable });
  }
  return new LifeboatError(`NET_HTTP_${status}`, message, { hint, retryable });
}

function snippet(text: string): string {
  const t = text.trim().replace(/\s+/g, " ");
  return t === "" ? "" : `: ${t.length > 200 ? `${t.slice(0, 200)}…` : t}`;
}
