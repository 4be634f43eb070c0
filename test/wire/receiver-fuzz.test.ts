import { describe, it } from "node:test";
import fc from "fast-check";
import { check } from "./arbitraries.js";
import { runScenario, scenario } from "./receiver-model.js";

void describe("receiver under replayed, reordered, duplicated and malformed frames", () => {
  // The 10^5-case run is receiver-fuzz.slow.test.ts.
  void it("applies each sequence number once, in order, within its window (2000 cases)", () =>
    check(
      fc.asyncProperty(scenario, async (s) => {
        await runScenario(s);
      }),
      2000,
    ));
});
