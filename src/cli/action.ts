import type { Command } from "commander";
import { type CliContext, contextOf } from "./context.js";

export type Handler<O> = (ctx: CliContext, opts: O, cmd: Command) => Promise<number | void>;

/** Wraps a handler so it gets its context; the exit code travels back through `run`. */
export function action<O>(handler: Handler<O>) {
  return async function (this: Command) {
    const code = await handler(contextOf(this), this.opts() as O, this);
    if (typeof code === "number") process.exitCode = code;
  };
}
