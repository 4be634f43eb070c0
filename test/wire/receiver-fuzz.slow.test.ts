import { describe, it } from "node:test";
import fc from "fast-check";
import { check } from "./arbitraries.js";
import { runScenario, scenario } from "./receiver-model.js";

void describe("receiver under replayed, reordered, duplicated and malformed frames (slow)", () => {
  void it(
    "applies each sequence number once, in order, within its window (10^5 cases)",
    { timeout: 30 * 60_000 },
    () =>
      check(
        fc.asyncProperty(scenario, async (s) => {
          await runScenario(s);
        }),
        100_000,
      ),
  );
});
