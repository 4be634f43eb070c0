import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import { dataPaths } from "../config.js";
import type { AppContext } from "../context.js";
import { errorSchema, httpError } from "../http-error.js";

/** Bare names only: no slash, no leading dot, so no path leaves the bundle directory. */
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MANIFEST_FILES = ["manifest", "manifest.sig"];

const CONTENT_TYPES: Record<string, string> = {
  ".sh": "text/x-shellscript; charset=utf-8",
  ".pem": "application/x-pem-file",
  ".js": "text/javascript; charset=utf-8",
  ".cjs": "text/javascript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
};

function contentType(name: string): string {
  if (name === "manifest") return "text/plain; charset=utf-8";
  return CONTENT_TYPES[path.extname(name)] ?? "application/octet-stream";
}

/**
 * Public, no authentication: the signed agent bundle at /downloads/agent/
 * (D/downloads/agent, written by `lifeboat bundle build`). Only the files its
 * manifest names, and the manifest and signature, are served; a client trusts
 * none of them until it has checked the signature chain against its pinned CA
 * fingerprint, so serving them in the clear gives nothing away.
 */
export function downloadRoutes(app: FastifyInstance, ctx: AppContext): void {
  const dir = dataPaths(ctx.config.dataDir).agentBundle;
  /** The names the bundle offers, from its manifest; none when there is no bundle. */
  const offered = async (): Promise<string[]> => {
    const text = await readFile(path.join(dir, "manifest"), "utf8").catch(() => undefined);
    if (text === undefined) return [];
    const listed = text
      .split("\n")
      .map((l) => /^file [0-9a-f]{64} \d+ (\S+)$/.exec(l)?.[1])
      .filter((n): n is string => n !== undefined && FILE_NAME.test(n));
    return [...listed, ...MANIFEST_FILES];
  };
  const noBundle = () =>
    httpError(
      404,
      "BUNDLE_NOT_FOUND",
      "this server has no agent bundle",
      "build one on the server with `lifeboat bundle build`",
    );

  app.get(
    "/downloads/agent/",
    { schema: { summary: "the agent bundle's files, one name a line", response: { 404: errorSchema } } },
    async (_request, reply) => {
      const names = await offered();
      if (names.length === 0) throw noBundle();
      return reply.type("text/plain; charset=utf-8").send(names.join("\n") + "\n");
    },
  );

  app.get<{ Params: { file: string } }>(
    "/downloads/agent/:file",
    {
      schema: {
        summary: "one file of the signed agent bundle",
        params: {
          type: "object",
          required: ["file"],
          properties: { file: { type: "string", maxLength: 255 } },
        },
        response: { 404: errorSchema },
      },
    },
    async (request, reply) => {
      const name = request.params.file;
      const names = FILE_NAME.test(name) ? await offered() : [];
      if (names.length === 0 && FILE_NAME.test(name)) throw noBundle();
      if (!names.includes(name))
        throw httpError(
          404,
          "BUNDLE_FILE_NOT_FOUND",
          `the agent bundle has no file ${JSON.stringify(name)}`,
          "see /downloads/agent/ for its files",
        );
      const file = path.join(dir, name);
      const st = await stat(file).catch(() => undefined);
      if (st === undefined || !st.isFile())
        throw httpError(
          404,
          "BUNDLE_FILE_NOT_FOUND",
          `the agent bundle's file ${name} is missing`,
          "rebuild it with `lifeboat bundle build`",
        );
      return reply
        .type(contentType(name))
        .header("content-length", st.size)
        .header("cache-control", "no-cache")
        .send(createReadStream(file));
    },
  );
}
