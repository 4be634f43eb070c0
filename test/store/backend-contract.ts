import { after, before, describe, it } from "node:test";
import { backendChecks } from "../../src/store/backend-checks.js";
import type { Backend } from "../../src/store/backend.js";

export interface ContractOptions {
  /** Checks this backend is excused from, by name, each with the reason it is skipped. */
  skip?: Record<string, string>;
}

/**
 * Registers the shared backend contract (src/store/backend-checks.ts) for one
 * implementation: one `it` per check, against one backend made before them
 * and cleaned up after.
 */
export function backendContract(
  name: string,
  make: () => Promise<{ backend: Backend; cleanup(): Promise<void> }>,
  opts: ContractOptions = {},
): void {
  const unknown = Object.keys(opts.skip ?? {}).filter((n) => !backendChecks.some((c) => c.name === n));
  if (unknown.length) throw new Error(`backendContract(${name}): no checks named ${unknown.join(", ")}`);

  void describe(`backend contract: ${name}`, () => {
    let env: { backend: Backend; cleanup(): Promise<void> } | undefined;
    before(async () => {
      env = await make();
    });
    after(async () => {
      await env?.cleanup();
    });
    for (const check of backendChecks) {
      const skip = opts.skip?.[check.name];
      void it(check.name, skip === undefined ? {} : { skip }, async () => {
        if (!env) throw new Error(`${name}: the backend was not made`);
        await check.run(env.backend);
      });
    }
  });
}
