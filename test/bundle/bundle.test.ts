/**
 * The signed agent bundle without a running agent: the manifest checks with
 * the openssl CLI; install.sh refuses a tampered file, a wrong fingerprint,
 * a tampered manifest and a missing signature, installing nothing; --dry-run
 * verifies and changes nothing; the bundled agent runs; the control plane
 * serves the bundle at /downloads/agent/; `bundle publish` puts it in S3 and
 * install.sh verifies it from there.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { appendFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { parseManifest } from "../../src/bundle/index.js";
import { initServer } from "../../src/control/init.js";
import { lifeboat } from "../support/cli.js";
import { type Site, startSite } from "../support/lifeboat-site.js";
import { startS3Server } from "../support/s3-server.js";
import { buildSiteBundle, caFingerprint, copyBundle, installSh, run } from "./helpers.js";

void describe("agent bundle", () => {
  let tmp = "";
  let site: Site;
  let bundle = "";
  let fp = "";
  let tokenFile = "";
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-bundle-"));
    site = await startSite(tmp);
    const built = await buildSiteBundle(site.dataDir, false);
    bundle = built.dir;
    fp = caFingerprint(path.join(site.dataDir, "ca.pem"));
    tokenFile = path.join(tmp, "token");
    // A real token: install.sh's connectivity check asks the server about it (a dry run never spends it).
    const made = await site.api<{ token: string }>("/api/v1/tokens", {
      method: "POST",
      body: { role: "agent" },
    });
    await writeFile(tokenFile, `${made.token}\n`, { mode: 0o600 });
  });
  after(async () => {
    await site?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  /** install.sh from `from` into a fresh prefix; asserts the prefix stays absent when refused. */
  const attempt = async (from: string, extra: string[] = [], fingerprint = fp) => {
    const prefix = path.join(tmp, `p-${Math.random().toString(36).slice(2)}`);
    const r = await installSh(path.join(bundle, "install.sh"), [
      "--endpoint",
      site.url,
      "--token-file",
      tokenFile,
      "--ca-fingerprint",
      fingerprint,
      "--from",
      from,
      "--no-systemd",
      "--prefix",
      prefix,
      "--config-dir",
      path.join(prefix, "etc"),
      "--unit-dir",
      path.join(prefix, "unit"),
      ...extra,
    ]);
    return { ...r, prefix };
  };
  const refused = async (from: string, message: RegExp, fingerprint = fp) => {
    const r = await attempt(from, [], fingerprint);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, message);
    assert.match(r.out, /nothing was installed/);
    assert.equal(existsSync(r.prefix), false, "nothing installed");
  };

  void it("the manifest verifies with the openssl CLI, against the release certificate from the CA", async () => {
    const pub = path.join(tmp, "release-pub.pem");
    const x = spawnSync("openssl", ["x509", "-in", path.join(bundle, "release.pem"), "-noout", "-pubkey"]);
    await writeFile(pub, x.stdout);
    const v = spawnSync(
      "openssl",
      ["dgst", "-sha256", "-verify", pub, "-signature", "manifest.sig", "manifest"],
      { cwd: bundle, encoding: "utf8" },
    );
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout, /Verified OK/);
    const chain = spawnSync("openssl", ["verify", "-CAfile", "ca.pem", "release.pem"], {
      cwd: bundle,
      encoding: "utf8",
    });
    assert.match(chain.stdout, /release.pem: OK/);
    const m = parseManifest(await readFile(path.join(bundle, "manifest"), "utf8"));
    const names = m.files.map((f) => f.name);
    for (const n of ["lifeboat-agent.cjs", "block-worker.js", "boot-inventory-worker.js", "zstd-napi.node"])
      assert.ok(names.includes(n), n);
    for (const f of m.files) {
      const h = spawnSync("sha256sum", [path.join(bundle, f.name)], { encoding: "utf8" });
      assert.equal(h.stdout.split(" ")[0], f.sha256, f.name);
    }
  });

  void it("the bundled agent runs from its own directory (agent status)", () => {
    const v = spawnSync(process.execPath, [path.join(bundle, "lifeboat-agent.cjs"), "--version"], {
      cwd: os.tmpdir(),
      encoding: "utf8",
    });
    assert.equal(v.stdout.trim(), "0.1.0", v.stderr);
    const s = spawnSync(
      process.execPath,
      [
        path.join(bundle, "lifeboat-agent.cjs"),
        "agent",
        "status",
        "--config-dir",
        path.join(tmp, "none"),
        "--json",
      ],
      { cwd: os.tmpdir(), encoding: "utf8" },
    );
    assert.equal(s.status, 1);
    assert.match(s.stderr, /AGENT_NOT_INSTALLED/);
  });

  void it("install.sh --dry-run verifies the chain and changes nothing", async () => {
    const r = await attempt(bundle, ["--dry-run"]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /ok {3}CA certificate matches the pinned fingerprint/);
    assert.match(r.out, /ok {3}manifest signed by the release key/);
    assert.match(r.out, /dry run: the bundle verified; nothing was changed/);
    assert.equal(existsSync(r.prefix), false);
  });

  void it("refuses a tampered file", async () => {
    const copy = await copyBundle(bundle, path.join(tmp, "tampered-file"));
    await appendFile(path.join(copy, "lifeboat-agent.cjs"), "\n// changed\n");
    await refused(copy, /file lifeboat-agent.cjs does not match its manifest/);
  });

  void it("refuses a wrong CA fingerprint", async () => {
    await refused(bundle, /not the pinned/, "00".repeat(32));
  });

  void it("refuses a tampered manifest", async () => {
    const copy = await copyBundle(bundle, path.join(tmp, "tampered-manifest"));
    const m = path.join(copy, "manifest");
    await writeFile(m, (await readFile(m, "utf8")).replace("version 0.1.0", "version 0.1.1"));
    await refused(copy, /signature does not verify/);
  });

  void it("refuses an unsigned bundle", async () => {
    const copy = await copyBundle(bundle, path.join(tmp, "unsigned"));
    await rm(path.join(copy, "manifest.sig"));
    await refused(copy, /no signature \(manifest.sig\)/);
  });

  void it("refuses a release certificate from another CA", async () => {
    const other = await mkdtemp(path.join(tmp, "other-"));
    await initServer({ dataDir: path.join(other, "d") });
    const copy = await copyBundle(bundle, path.join(tmp, "other-release"));
    await writeFile(path.join(copy, "release.pem"), await readFile(path.join(other, "d", "signing.pem")));
    await refused(copy, /release certificate was not issued by the pinned CA/);
  });

  void it("the control plane serves the bundle at /downloads/agent/, nothing else", async () => {
    const get = async (p: string) =>
      (
        await run("curl", [
          "-sk",
          "--path-as-is",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code} %{content_type}",
          `${site.url}${p}`,
        ])
      ).out;
    assert.equal(await get("/downloads/agent/install.sh"), "200 text/x-shellscript; charset=utf-8");
    assert.equal(await get("/downloads/agent/manifest"), "200 text/plain; charset=utf-8");
    assert.equal(await get("/downloads/agent/manifest.sig"), "200 application/octet-stream");
    assert.equal(await get("/downloads/agent/ca.pem"), "200 application/x-pem-file");
    assert.equal(await get("/downloads/agent/lifeboat-agent.cjs"), "200 text/javascript; charset=utf-8");
    assert.match(await get("/downloads/agent/"), /^200 text\/plain/);
    for (const bad of [
      "/downloads/agent/../config.json",
      "/downloads/agent/..%2Fconfig.json",
      "/downloads/agent/%2e%2e%2fkeys%2fsigning.key",
      "/downloads/agent/.sea-x",
      "/downloads/agent/config.json",
    ])
      assert.match(await get(bad), /^404 /, bad);
  });

  void it("install.sh --dry-run from the control plane", async () => {
    const r = await attempt(`${site.url}/downloads/agent/`, ["--dry-run"]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /files match the manifest/);
  });

  void it("bundle publish puts it in S3, and install.sh verifies it from there", async () => {
    const s3 = await startS3Server();
    try {
      const r = await lifeboat(
        [
          "bundle",
          "publish",
          "--from",
          bundle,
          "--s3-endpoint",
          s3.endpoint,
          "--bucket",
          s3.bucket,
          "--prefix",
          "agent/v1",
          "--json",
        ],
        { env: { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", AWS_REGION: "us-east-1" } },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.ok((JSON.parse(r.stdout) as { files: string[] }).files.includes("manifest.sig"));
      const d = await attempt(`${s3.endpoint}/${s3.bucket}/agent/v1/`, ["--dry-run"]);
      assert.equal(d.code, 0, d.out);
      assert.match(d.out, /files match the manifest/);
    } finally {
      await s3.stop();
    }
  });
});
