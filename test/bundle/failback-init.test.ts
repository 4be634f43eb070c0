import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { failbackInit, udhcpcScript } from "../../src/bundle/failback-init.js";

/** `sh -n`: the scripts of the failback boot environment parse (they run under busybox sh, a POSIX shell). */
function parses(script: string): string {
  const r = spawnSync("sh", ["-n"], { input: script, encoding: "utf8" });
  return r.status === 0 ? "" : r.stderr;
}

void describe("failback boot environment scripts", () => {
  void it("/init parses, quotes what it was given, and ends with the ready line and the chosen action", () => {
    const init = failbackInit({
      then: "poweroff",
      agent: "/opt/lifeboat/lifeboat-agent",
      configDir: "/etc/lifeboat/agent",
      disks: ["/dev/vda", "/dev/disk with 'quote"],
      serverName: "web-1",
    });
    assert.equal(parses(init), "");
    assert.match(init, /^#!\/bin\/sh\n/);
    assert.match(init, /'\/dev\/disk with '\\''quote'/);
    assert.match(init, /agent run --failback-only --config-dir '\/etc\/lifeboat\/agent'/);
    assert.match(init, /say "ready"/);
    assert.match(init, /^then='poweroff'$/m);
  });

  void it("udhcpc's script parses", () => {
    assert.equal(parses(udhcpcScript()), "");
  });
});
