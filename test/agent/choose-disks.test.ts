/**
 * `lifeboat agent install` without --devices: with --no-prompt it takes
 * every non-removable, writable whole disk that discovery finds (loop, dm,
 * md and zram devices are not disks); on a terminal it lists the disks and
 * takes the ones the operator numbers. Checked against this machine's own
 * disks, as discovery sees them at the same moment.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { discoverBlockDevices } from "../../src/agent/index.js";
import { BIN, lifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";

void describe("agent install without --devices", () => {
  let tmp = "";
  let site: Site;
  let caFile = "";
  let n = 0;
  /** A fresh token file and config directory. */
  const fresh = async () => {
    n++;
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent", uses: 1 },
    });
    const tokenFile = path.join(tmp, `token-${n}`);
    await writeFile(tokenFile, token.token, { mode: 0o600 });
    return { tokenFile, configDir: path.join(tmp, `agent-${n}`) };
  };
  const disks = async () => (await discoverBlockDevices()).filter((d) => d.kind === "disk" && !d.readOnly);
  const configOf = async (configDir: string) =>
    JSON.parse(await readFile(path.join(configDir, "config.json"), "utf8")) as {
      disks: { path: string }[];
      diskSelection: string;
    };
  const configDisks = async (configDir: string) => (await configOf(configDir)).disks.map((d) => d.path);

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-choose-disks-"));
    site = await startSite(tmp);
    caFile = path.join(tmp, "ca.pem");
    await writeFile(caFile, site.caPem);
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it("--no-prompt takes every non-removable disk", async () => {
    const { tokenFile, configDir } = await fresh();
    const expected = (await disks()).filter((d) => !d.removable).map((d) => d.path);
    const r = await lifeboat([
      "agent",
      "install",
      "--endpoint",
      site.url,
      "--ca-file",
      caFile,
      "--token-file",
      tokenFile,
      "--config-dir",
      configDir,
      "--hostname",
      "choose-disks-all",
      "--no-prompt",
      "--json",
    ]);
    if (expected.length === 0) {
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /AGENT_NO_DISKS/);
      return;
    }
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { disks: { path: string; kind: string }[] };
    assert.deepEqual(
      out.disks.map((d) => d.path),
      expected,
    );
    assert.ok(out.disks.every((d) => d.kind === "device"));
    assert.deepEqual(await configDisks(configDir), expected);
    // Every disk: the running agent adds new ones too.
    assert.equal((await configOf(configDir)).diskSelection, "all");
  });

  /** `agent install` on a terminal (script(1) gives it one), answering `answer`. */
  const onTerminal = async (answer: string) => {
    const { tokenFile, configDir } = await fresh();
    const cmd = [
      process.execPath,
      BIN,
      "agent",
      "install",
      "--endpoint",
      site.url,
      "--ca-file",
      caFile,
      "--token-file",
      tokenFile,
      "--config-dir",
      configDir,
      "--hostname",
      `choose-disks-${n}`,
    ]
      .map((a) => `'${a}'`)
      .join(" ");
    const child = spawn("script", ["-qec", cmd, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", resolve);
      // Answer once the question is on the terminal; stdin stays open until the install ends.
      const ask = setInterval(() => {
        if (output.includes("replicate which")) {
          clearInterval(ask);
          child.stdin.write(`${answer}\n`);
        }
      }, 50);
      child.once("close", () => clearInterval(ask));
    });
    child.stdin.destroy();
    return { code, output, configDir };
  };

  void it("on a terminal, lists the disks and takes the one chosen", { timeout: 60_000 }, async (t) => {
    const found = await disks();
    if (found.length === 0) return t.skip("no whole disk on this machine to list");
    const r = await onTerminal("1");
    assert.equal(r.code, 0, r.output);
    for (const d of found) assert.ok(r.output.includes(d.path), `${d.path} listed:\n${r.output}`);
    assert.deepEqual(await configDisks(r.configDir), [found[0]!.path]);
    assert.equal((await configOf(r.configDir)).diskSelection, "listed", "the disks chosen, no others");
  });

  void it("on a terminal, refuses a number not listed", { timeout: 60_000 }, async (t) => {
    const found = await disks();
    if (found.length === 0) return t.skip("no whole disk on this machine to list");
    const r = await onTerminal(String(found.length + 1));
    assert.equal(r.code, 2, r.output);
    assert.match(r.output, /no disk number/);
  });
});
