/**
 * install.sh end to end against a running server, with --no-systemd into a
 * temporary prefix: from a bundle directory carried in by hand (the single
 * executable) and from the control plane's /downloads/agent/ (the JavaScript
 * bundle on this Node). Each time the agent registers, replicates an
 * image-file disk and a PIT of it is made; the unit passes systemd-analyze;
 * install.sh run again changes nothing; uninstall leaves nothing behind.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createHash, randomBytes } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exportDisk, listPits } from "../../src/store/index.js";
import { requireCapability, strictCapabilities } from "../support/capabilities.js";
import { lifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { buildSiteBundle, caFingerprint, installSh, run } from "./helpers.js";
import { testNodeCache } from "./node-cache.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("install.sh end to end", () => {
  let tmp = "";
  let site: Site;
  let bundle = "";
  let fp = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-install-"));
    site = await startSite(tmp);
    const built = await buildSiteBundle(site.dataDir, { cacheDir: testNodeCache() });
    bundle = built.dir;
    fp = caFingerprint(path.join(site.dataDir, "ca.pem"));
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  const installAndReplicate = async (name: string, from: string | undefined, runtime: string) => {
    const dir = await mkdtemp(path.join(tmp, `${name}-`));
    const prefix = path.join(dir, "opt");
    const configDir = path.join(dir, "etc");
    const unitDir = path.join(dir, "units");
    const image = path.join(dir, "disk.img");
    await writeFile(image, randomBytes(8 * 1024 * 1024));
    const tokenFile = path.join(dir, "token");
    const token = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      // Both installs run on this one host: each registers under its own name.
      body: { role: "agent", uses: 1, serverName: `bundle-${name}` },
    });
    await writeFile(tokenFile, token.token, { mode: 0o600 });
    const args = [
      "--endpoint",
      site.url,
      "--token-file",
      tokenFile,
      "--ca-fingerprint",
      fp,
      ...(from !== undefined ? ["--from", from] : []),
      "--disk-image",
      image,
      "--no-prompt",
      "--no-systemd",
      "--runtime",
      runtime,
      "--prefix",
      prefix,
      "--config-dir",
      configDir,
      "--unit-dir",
      unitDir,
    ];
    const r = await installSh(path.join(bundle, "install.sh"), args);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, runtime === "sea" ? /single executable/ : /Node\.js at/);
    const agent = path.join(prefix, "bin", "lifeboat-agent");
    const status = async () => {
      const s = await run(agent, ["agent", "status", "--config-dir", configDir, "--json"]);
      return JSON.parse(s.out) as { state: string; serverName: string; serverId: string };
    };
    const end = Date.now() + 90_000;
    let s = await status();
    while (s.state !== "CONTINUOUS") {
      if (Date.now() > end)
        throw new Error(
          `no CONTINUOUS: ${JSON.stringify(s)}\n${await readFile(path.join(prefix, "agent.log"), "utf8")}`,
        );
      await sleep(250);
      s = await status();
    }
    // The wrapper gives the agent glibc's tunables: huge pages, and large buffers mapped apart
    // (install.sh). glibc 2.36 parses GLIBC_TUNABLES in the process's original environment block and
    // leaves a NUL where each ':' was (the process itself reads a whole copy), so /proc/PID/environ
    // shows the tunables after the first as entries of their own.
    const pid = (await readFile(path.join(prefix, "agent.pid"), "utf8")).trim();
    const environ = await readFile(`/proc/${pid}/environ`, "utf8");
    assert.match(
      environ,
      /(^|\0)GLIBC_TUNABLES=glibc\.malloc\.hugetlb=1[:\0]glibc\.malloc\.mmap_threshold=1048576(\0|$)/,
      `agent environment: ${environ.split("\0").join(" ")}`,
    );

    const caFile = path.join(dir, "ca.pem");
    await writeFile(caFile, site.caPem);
    const keyFile = path.join(dir, "admin.key");
    await writeFile(keyFile, site.adminKey, { mode: 0o600 });
    const pit = await lifeboat([
      "pits",
      "create",
      s.serverId,
      "--endpoint",
      site.url,
      "--ca-file",
      caFile,
      "--api-key-file",
      keyFile,
      "--json",
      "--timeout",
      "2m",
    ]);
    assert.equal(pit.code, 0, pit.stderr);
    const made = JSON.parse(pit.stdout) as { id: string };
    const repo = await site.openRepo();
    try {
      const found = (await listPits(repo, {})).find((p) => p.id === made.id);
      assert.ok(found, "the PIT is in the repository");
      const out = path.join(dir, "pit.img");
      await exportDisk(repo, found, 0, out);
      const sha = async (f: string) =>
        createHash("sha256")
          .update(await readFile(f))
          .digest("hex");
      assert.equal(await sha(out), await sha(image), "the PIT holds the image's bytes");
    } finally {
      await repo.close();
    }

    // agent upgrade: nothing to do; then a changed local file is put back from the
    // signed bundle and the agent restarted; a changed bundle on the server is refused.
    const upgrade = async (...extra: string[]) => {
      const u = await run(agent, ["agent", "upgrade", "--config-dir", configDir, "--json", ...extra]);
      return {
        code: u.code,
        out: u.out,
        r: u.code === 0 ? (JSON.parse(u.out) as { replaced: string[]; restarted: string | null }) : null,
      };
    };
    const same = await upgrade();
    assert.equal(same.code, 0, same.out);
    assert.deepEqual(same.r!.replaced, []);
    await writeFile(path.join(prefix, "block-worker.js"), "// not the bundle's\n", { flag: "a" });
    const served = path.join(bundle, "manifest");
    const manifest = await readFile(served, "utf8");
    await writeFile(served, manifest.replace("version ", "version 9"));
    try {
      const refusedUpgrade = await upgrade();
      assert.equal(refusedUpgrade.code, 1, refusedUpgrade.out);
      assert.match(refusedUpgrade.out, /AGENT_UPGRADE_UNVERIFIED/);
    } finally {
      await writeFile(served, manifest);
    }
    const fixed = await upgrade();
    assert.equal(fixed.code, 0, fixed.out);
    assert.deepEqual(fixed.r!.replaced, ["block-worker.js"]);
    assert.match(fixed.r!.restarted ?? "", /started the agent/);
    const again0 = Date.now();
    for (s = await status(); s.state !== "CONTINUOUS"; s = await status()) {
      if (Date.now() - again0 > 90_000) throw new Error(`no CONTINUOUS after upgrade: ${JSON.stringify(s)}`);
      await sleep(250);
    }

    // The unit as written, checked by systemd's own tools where they exist.
    const unit = path.join(unitDir, "lifeboat-agent.service");
    const unitText = await readFile(unit, "utf8");
    assert.match(unitText, /NoNewPrivileges=yes/);
    assert.doesNotMatch(unitText, /^MemoryDenyWriteExecute/m);
    const analyze = (await run("sh", ["-c", "command -v systemd-analyze"])).code === 0;
    if (!analyze && strictCapabilities)
      throw new Error(
        "LIFEBOAT_TEST_STRICT=1 and no systemd-analyze to check the unit with (install systemd)",
      );
    if (analyze) {
      const v = await run("systemd-analyze", ["verify", unit]);
      assert.equal(v.code, 0, v.out);
      const sec = await run("systemd-analyze", ["security", "--offline=true", unit]);
      assert.equal(sec.code, 0, sec.out);
      assert.match(sec.out, /Overall exposure level/);
    }

    // Again: verified, already registered, restarted; nothing new on the server.
    const again = await installSh(path.join(bundle, "install.sh"), args);
    assert.equal(again.code, 0, again.out);
    assert.match(again.out, /already registered/);

    const u = await installSh(path.join(bundle, "install.sh"), ["uninstall", "--prefix", prefix]);
    assert.equal(u.code, 0, u.out);
    for (const p of [prefix, configDir, unit]) assert.equal(existsSync(p), false, `${p} removed`);
  };

  void it(
    "from a directory carried in by hand, with the single executable",
    { timeout: 240_000 },
    async (t) => {
      if (!requireCapability(t, "root")) return;
      await installAndReplicate("dir", bundle, "sea");
    },
  );

  void it("from the control plane's /downloads/agent/, with Node.js", { timeout: 240_000 }, async (t) => {
    if (!requireCapability(t, "root")) return;
    await installAndReplicate("cp", undefined, "node");
  });

  void it("the single executable answers --version and agent status --help", async () => {
    const v = await run(path.join(bundle, "lifeboat-agent"), ["--version"]);
    assert.equal(v.out.trim(), "0.1.0");
    const h = await run(path.join(bundle, "lifeboat-agent"), ["agent", "status", "--help"]);
    assert.equal(h.code, 0, h.out);
    assert.match(h.out, /Usage: lifeboat-agent agent status/);
  });
});
