import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import type { FetchJsonOptions } from "../net/index.js";
import { type CliContext, requireOption } from "./context.js";

/** The client-side options of the operator contract, shared by every command that talks to the API. */
export interface ApiOpts {
  endpoint?: string;
  caFile?: string;
  caFingerprint?: string;
  apiKeyFile?: string;
}

export function apiOptions(c: Command): Command {
  return c
    .option("--endpoint <url>", "the control plane, https://host[:port]")
    .option("--ca-file <file>", "the Lifeboat CA certificate (D/ca.pem) to trust")
    .option("--ca-fingerprint <hex>", "SHA-256 of the CA certificate, instead of --ca-file")
    .option("--api-key-file <file>", "file holding the API key (default: LIFEBOAT_API_KEY_FILE)");
}

export interface ApiClient {
  /** `path` starts with /api/v1/...; the key goes as `Authorization: Bearer`. */
  call<T>(path: string, opts?: FetchJsonOptions): Promise<T>;
  close(): Promise<void>;
}

/** Runs `fn` with a client for --endpoint, closing it afterwards. */
export async function withApi<T>(
  ctx: CliContext,
  o: ApiOpts,
  fn: (api: ApiClient) => Promise<T>,
): Promise<T> {
  const endpoint = requireOption(o.endpoint, "--endpoint").replace(/\/+$/, "");
  if (!/^https:\/\//.test(endpoint)) {
    throw new LifeboatError("USAGE", `--endpoint ${endpoint} is not an https:// URL`, {
      hint: "Lifeboat speaks TLS only",
      exitCode: 2,
    });
  }
  const keyFile = o.apiKeyFile ?? ctx.env.apiKeyFile;
  if (keyFile === undefined) {
    throw new LifeboatError("USAGE", "no API key: give --api-key-file or set LIFEBOAT_API_KEY_FILE", {
      hint: "the first admin key is D/admin-api.key on the server",
      exitCode: 2,
    });
  }
  const key = (
    await readFile(keyFile, "utf8").catch((err: unknown) => {
      throw new LifeboatError("API_KEY_FILE_UNREADABLE", `cannot read the API key file ${keyFile}`, {
        hint: "check the path and its permissions",
        cause: err,
        exitCode: 2,
      });
    })
  ).trim();
  const caPem = o.caFile === undefined ? undefined : await readFile(o.caFile, "utf8");
  // Loaded here, not at the top: the HTTP client and certificate code are hundreds of modules,
  // and commands that take --repo instead of --endpoint (`pits list`) start faster without them.
  const { createApiDispatcher, fetchJson } = await import("../net/index.js");
  const dispatcher = createApiDispatcher({
    ...(caPem !== undefined ? { caPem } : {}),
    ...(o.caFingerprint !== undefined ? { caFingerprint: o.caFingerprint } : {}),
  });
  const api: ApiClient = {
    call: (path, opts = {}) =>
      fetchJson(dispatcher, `${endpoint}${path}`, {
        ...opts,
        headers: { ...opts.headers, authorization: `Bearer ${key}` },
      }),
    close: () => dispatcher.close(),
  };
  try {
    return await fn(api);
  } finally {
    await api.close();
  }
}
