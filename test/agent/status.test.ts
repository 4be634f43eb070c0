import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type DiskProgress, agentState, diskStatus } from "../../src/agent/status.js";

const GiB = 1 << 30;

function disk(over: Partial<DiskProgress> = {}, dirty = { fresh: 0, settled: 0 }): DiskProgress {
  return {
    cfg: { index: 0, path: "/dev/sdb" },
    size: GiB,
    fresh: { dirtyBytes: () => dirty.fresh, dirtySince: dirty.fresh ? 5_000 : null },
    settled: { dirtyBytes: () => dirty.settled, dirtySince: dirty.settled ? 3_000 : null },
    owed: undefined,
    pass: undefined,
    ...over,
  };
}

const settings = { stallSeconds: 300, lagThresholdSeconds: 30 };

void describe("agent status", () => {
  void it("a disk with no pass is CONTINUOUS; its backlog is its dirty bytes, its oldest write the older set's", () => {
    const r = diskStatus(disk({}, { fresh: 4096, settled: 65536 }), 10_000);
    assert.equal(r.status.state, "CONTINUOUS");
    assert.equal(r.status.dirtyBytes, 69632);
    assert.equal(r.backlogBytes, 69632);
    assert.equal(r.oldest, 3_000);
    assert.equal(r.status.progress, undefined);
  });

  void it("a running pass reports progress, rate and ETA, and counts what it has left as backlog", () => {
    const r = diskStatus(disk({ pass: { kind: "initial", done: GiB / 4, started: 0 } }), 10_000);
    assert.equal(r.status.state, "INITIAL_SYNC");
    assert.deepEqual(r.status.progress, {
      doneBytes: GiB / 4,
      totalBytes: GiB,
      bytesPerSecond: Math.round(GiB / 4 / 10),
      etaSeconds: 30,
    });
    assert.equal(r.backlogBytes, (3 * GiB) / 4);
    assert.equal(r.oldest, null);
  });

  void it("an owed pass counts as running before it starts; a pass with nothing done has no ETA", () => {
    assert.equal(diskStatus(disk({ owed: "rescan" }), 1).status.state, "RESCAN");
    const r = diskStatus(disk({ pass: { kind: "rescan", done: 0, started: 1_000 } }), 1_000);
    assert.equal(r.status.progress?.etaSeconds, null);
    assert.equal(r.backlogBytes, GiB);
  });

  void it("a pass all sent keeps its state until the replicator acknowledges its last frame", () => {
    const sent = disk({ sentPass: { kind: "initial", seq: 120 } });
    assert.equal(diskStatus(sent, 1, 0).status.state, "INITIAL_SYNC");
    assert.equal(diskStatus(sent, 1, 119).status.state, "INITIAL_SYNC");
    assert.equal(diskStatus(sent, 1, 120).status.state, "CONTINUOUS");
    const rescan = disk({ sentPass: { kind: "rescan", seq: 7 } });
    assert.equal(diskStatus(rescan, 1, 3).status.state, "RESCAN");
    // A pass owed again wins over the one sent before it.
    assert.equal(diskStatus({ ...sent, owed: "rescan" }, 1, 0).status.state, "RESCAN");
  });

  void it("state: INITIATING until welcomed, a pass first, then STALLED, BACKLOG, CONTINUOUS", () => {
    const line = (state: "INITIAL_SYNC" | "RESCAN" | "CONTINUOUS") =>
      diskStatus(disk(state === "CONTINUOUS" ? {} : { owed: state === "RESCAN" ? "rescan" : "initial" }), 0)
        .status;
    const base = {
      welcomed: true,
      disks: [line("CONTINUOUS")],
      backlogBytes: 0,
      lagSeconds: 0,
      msSinceProgress: 0,
      settings,
    };
    assert.equal(agentState({ ...base, welcomed: false, disks: [line("INITIAL_SYNC")] }), "INITIATING");
    assert.equal(agentState({ ...base, disks: [line("RESCAN"), line("INITIAL_SYNC")] }), "INITIAL_SYNC");
    assert.equal(agentState({ ...base, disks: [line("CONTINUOUS"), line("RESCAN")] }), "RESCAN");
    assert.equal(
      agentState({ ...base, backlogBytes: 1, msSinceProgress: 300_001, lagSeconds: 400 }),
      "STALLED",
    );
    // Nothing to ship: however long since the last acknowledgement, not stalled.
    assert.equal(agentState({ ...base, msSinceProgress: 10_000_000 }), "CONTINUOUS");
    assert.equal(agentState({ ...base, backlogBytes: 1, lagSeconds: 31, msSinceProgress: 1_000 }), "BACKLOG");
    assert.equal(agentState({ ...base, backlogBytes: 1, lagSeconds: 30 }), "CONTINUOUS");
  });
});
