import type { FastifyInstance } from "fastify";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { httpError } from "../http-error.js";

/**
 * The web console's static files (built by `npm run build` from src/console
 * into dist/console): `/` answers 200 with the page, `/assets/*` its bundles
 * (content-hashed names, cached for a year). Read once, on first use.
 *
 * Every response of the app carries the security headers below. The policy
 * allows nothing from another origin, no inline script or style element, no
 * framing (the console's buttons cannot be clickjacked), no plugins.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
  "permissions-policy": "camera=(), microphone=(), geolocation=()",
  "strict-transport-security": "max-age=31536000",
};

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".map": "application/json; charset=utf-8",
};

/** dist/console beside this build (dist/src/control/routes/ → dist/console). */
export const DEFAULT_CONSOLE_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "console",
);

interface ConsoleFiles {
  index: Buffer;
  assets: Map<string, { body: Buffer; type: string }>;
}

function loadFiles(dir: string): ConsoleFiles | undefined {
  try {
    const index = readFileSync(path.join(dir, "index.html"));
    const assets = new Map<string, { body: Buffer; type: string }>();
    for (const name of readdirSync(path.join(dir, "assets"))) {
      const type = TYPES[path.extname(name)];
      if (type !== undefined) assets.set(name, { body: readFileSync(path.join(dir, "assets", name)), type });
    }
    return { index, assets };
  } catch {
    return undefined;
  }
}

/** The security headers on every response of `app` (called before any route is added). */
export function installSecurityHeaders(app: FastifyInstance): void {
  app.addHook("onSend", async (_request, reply, payload) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) void reply.header(k, v);
    return payload;
  });
}

export function consoleStaticRoutes(app: FastifyInstance, dir: string = DEFAULT_CONSOLE_DIR): void {
  let files: ConsoleFiles | undefined;
  const get = (): ConsoleFiles => {
    files ??= loadFiles(dir);
    if (files === undefined)
      throw httpError(
        404,
        "CONSOLE_NOT_BUILT",
        `the web console's files are not in ${dir}`,
        "build it with `npm run build` (it writes dist/console)",
      );
    return files;
  };
  const hide = { hide: true } as const;

  app.get("/", { schema: hide }, async (_request, reply) => {
    const f = get();
    return reply.type("text/html; charset=utf-8").header("cache-control", "no-cache").send(f.index);
  });

  app.get<{ Params: { name: string } }>("/assets/:name", { schema: hide }, async (request, reply) => {
    const asset = get().assets.get(request.params.name);
    if (asset === undefined)
      throw httpError(404, "NOT_FOUND", `no console asset ${request.params.name}`, "reload the console");
    const immutable = /-[A-Z0-9]{8}\.(js|css|map)$/.test(request.params.name);
    return reply
      .type(asset.type)
      .header("cache-control", immutable ? "public, max-age=31536000, immutable" : "no-cache")
      .send(asset.body);
  });
}
