/**
 * The console's one way to the control plane: same origin, the session
 * cookie (sent by the browser, never readable here), and the CSRF header on
 * every request. Errors arrive as {code, message, hint} and are thrown as
 * ApiError; a 401 also tells the app that the session is gone.
 */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint: string,
  ) {
    super(message);
  }
}

export const SIGNED_OUT_EVENT = "lifeboat:signed-out";

export async function api<T>(
  path: string,
  init: { method?: string; body?: unknown; signal?: AbortSignal } = {},
): Promise<T> {
  const headers: Record<string, string> = { "x-lifeboat-csrf": "1", accept: "application/json" };
  if (init.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method: init.method ?? "GET",
    headers,
    credentials: "same-origin",
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
    ...(init.signal ? { signal: init.signal } : {}),
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = undefined;
  try {
    json = text === "" ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = (json ?? {}) as { code?: string; message?: string; hint?: string };
    if (res.status === 401 && !path.endsWith("/session")) window.dispatchEvent(new Event(SIGNED_OUT_EVENT));
    throw new ApiError(res.status, e.code ?? "HTTP_" + res.status, e.message ?? res.statusText, e.hint ?? "");
  }
  return json as T;
}

export const enc = encodeURIComponent;
