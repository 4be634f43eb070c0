import { pino, type Logger } from "pino";

export type { Logger };

/** Structured JSON logs on stderr; quiet unless LIFEBOAT_LOG_LEVEL says otherwise (read by the CLI config). */
export function createLogger(level = "warn", name = "lifeboat"): Logger {
  return pino({ name, level }, pino.destination(2));
}

export const silentLogger: Logger = pino({ level: "silent" });
