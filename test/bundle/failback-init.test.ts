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

  void it("puts the original agent directory back only when asked, and only under a plain path", () => {
    const base = {
      then: "reboot" as const,
      agent: "/opt/lifeboat/lifeboat-agent",
      configDir: "/etc/lifeboat/agent",
      disks: ["/dev/vda"],
      serverName: "web-1",
    };
    assert.doesNotMatch(failbackInit(base), /restore_identity/);
    const init = failbackInit({
      ...base,
      restoreIdentity: { dir: "/etc/lifeboat/agent/", config: "/etc/lifeboat/server-config.json" },
    });
    assert.equal(parses(init), "");
    assert.match(init, /^\[ \$rc -eq 0 \] && restore_identity$/m, "only after a ready failback");
    assert.match(init, /^ {2}rel='etc\/lifeboat\/agent'$/m);
    assert.match(init, /cp '\/etc\/lifeboat\/server-config.json' "\$t.lifeboat-new\/config.json"/);
    assert.ok(init.indexOf("restore_identity\n") < init.lastIndexOf("finish"), "before the reboot");
    for (const dir of ["/", "/etc/../root", ""])
      assert.throws(
        () => failbackInit({ ...base, restoreIdentity: { dir, config: "/x" } }),
        /not an agent directory path/,
      );
  });

  void it("udhcpc's script parses", () => {
    assert.equal(parses(udhcpcScript()), "");
  });
});
