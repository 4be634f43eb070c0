/**
 * The only module that reads the process environment. Values are read once,
 * validated and frozen; commands receive them as plain data.
 */
export interface Environment {
  keyFile: string | undefined;
  /** LIFEBOAT_API_KEY_FILE: the operator's API key file when --api-key-file is not given. */
  apiKeyFile: string | undefined;
  logLevel: string;
  /** Standard error is a terminal: show progress. */
  interactive: boolean;
  /** HTTPS_PROXY / HTTP_PROXY / NO_PROXY (or their lower-case forms), as `lifeboat doctor` reports them. */
  proxy: { httpsProxy?: string; httpProxy?: string; noProxy?: string };
}

export function readEnvironment(env: NodeJS.ProcessEnv = process.env): Readonly<Environment> {
  return Object.freeze({
    keyFile: env.LIFEBOAT_KEY_FILE || undefined,
    apiKeyFile: env.LIFEBOAT_API_KEY_FILE || undefined,
    logLevel: env.LIFEBOAT_LOG_LEVEL || "warn",
    interactive: Boolean(process.stderr.isTTY) && env.CI !== "true",
    proxy: Object.freeze(proxyVariables(env)),
  });
}

function proxyVariables(env: NodeJS.ProcessEnv): Environment["proxy"] {
  const pick = (name: string) => env[name] || env[name.toLowerCase()] || undefined;
  const [httpsProxy, httpProxy, noProxy] = ["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"].map(pick);
  return {
    ...(httpsProxy ? { httpsProxy } : {}),
    ...(httpProxy ? { httpProxy } : {}),
    ...(noProxy ? { noProxy } : {}),
  };
}
