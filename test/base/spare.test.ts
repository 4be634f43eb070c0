import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { takeSpare } from "../../src/base/spare.js";

void describe("takeSpare", () => {
  void it("takes the smallest buffer that fits, and none when none fits", () => {
    const [a, b, c] = [new ArrayBuffer(4096), new ArrayBuffer(1024), new ArrayBuffer(2048)];
    const spare = [a, b, c];
    assert.equal(takeSpare(spare, 1500), c);
    assert.deepEqual(spare, [a, b]);
    assert.equal(takeSpare(spare, 8192), undefined);
    assert.deepEqual(spare, [a, b]);
    assert.equal(takeSpare(spare, 1024), b);
    assert.equal(takeSpare(spare, 1), a);
    assert.equal(takeSpare(spare, 1), undefined);
  });
});
