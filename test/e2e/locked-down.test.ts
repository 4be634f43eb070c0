/**
 * The situation Lifeboat exists for, in network namespaces: a source server
 * with no default route and no DNS server, behind a firewall that lets
 * through only TCP 443 to the recovery site's private address and drops and
 * counts everything else.
 *
 * The `recovery` namespace runs the control plane (with its embedded
 * replicator) and an S3-compatible server (s3rver, the site's software
 * bucket, with a certificate from the site's own CA) on loopback addresses
 * only. The site's one address and port is a TLS-passthrough front, HAProxy
 * in TCP mode routing by the TLS server name: `s3.drsite.lifeboat.test` to the
 * bucket, everything else (the Lifeboat name, a bare address) to the control
 * plane. That is how a locked-down site puts a second service behind the one
 * address and port its firewalls allow, without opening anything: mutual TLS
 * still ends at Lifeboat, and the firewall rule does not change.
 * (docs/install-locked-down.md, "Installing from the site's bucket".)
 *
 * On the source: install.sh from the control plane with a pinned CA
 * fingerprint and an install token from a file, reaching the site by a name
 * from its hosts file; the agent replicates an ext4 loop device to a
 * filesystem-consistent PIT. Then install.sh again over it, this time from
 * the bucket (`lifeboat bundle publish` put the signed bundle there, with
 * credentials from the environment): the same verification chain, the
 * registration kept, the agent back to CONTINUOUS. A bucket object with one
 * byte changed is refused and nothing is installed; uninstall removes
 * everything. The firewall's drop counter must stay at zero throughout:
 * nothing on the source tried to reach anything but the site's one port.
 * Then the doctor on the source: a wrong CA fingerprint fails at the TLS
 * step, and a port the firewall drops fails at the TCP step with the
 * firewall hint (and is counted).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentStatus } from "../../src/agent/index.js";
import { certFingerprint, formatFingerprint } from "../../src/net/index.js";
import { requireCapability, skipUnless, strictCapabilities } from "../support/capabilities.js";
import { lifeboat } from "../support/cli.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { type PrivateNetwork, type Service, createPrivateNetwork } from "../support/private-network.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const S3_MAIN = path.resolve(import.meta.dirname, "../support/s3-serve-main.js");
/** Inside `recovery`, on loopback only. */
const CONTROL_PLANE = "127.0.0.1:8443";
const S3_PORT = 9443;

/** The site's own CA and the bucket's certificate from it (openssl, as a site's PKI would). */
function sitePki(dir: string, s3Name: string): { ca: string; key: string; cert: string } {
  const ca = path.join(dir, "site-ca.pem");
  const caKey = path.join(dir, "site-ca.key");
  const key = path.join(dir, "s3.key");
  const cert = path.join(dir, "s3.pem");
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"];
  for (const args of [
    ["req", "-x509", ...ec, "-keyout", caKey, "-out", ca, "-subj", "/CN=Example site CA"],
    [
      "req",
      "-x509",
      ...ec,
      "-CA",
      ca,
      "-CAkey",
      caKey,
      "-keyout",
      key,
      "-out",
      cert,
      "-subj",
      `/CN=${s3Name}`,
      "-addext",
      `subjectAltName=DNS:${s3Name},IP:127.0.0.1`,
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      "extendedKeyUsage=serverAuth",
    ],
  ]) {
    const r = spawnSync("openssl", args, { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
  }
  return { ca, key, cert };
}

/** HAProxy in TCP mode on the site's address: the bucket's TLS name to the bucket, the rest to Lifeboat. */
function frontConfig(siteAddress: string, s3Name: string): string {
  return `global
  maxconn 512
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend site
  bind ${siteAddress}:443
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend bucket if { req.ssl_sni -i ${s3Name} }
  default_backend lifeboat
backend lifeboat
  server control-plane ${CONTROL_PLANE}
backend bucket
  server s3 127.0.0.1:${S3_PORT}
`;
}

function haproxyMissing(): string | null {
  return spawnSync("sh", ["-c", "command -v haproxy"], { stdio: "ignore" }).status === 0
    ? null
    : "haproxy is not installed (the site's TLS-passthrough front)";
}

void describe("a source server in a locked-down network", skipUnless("netns", "loop", "tracefs"), () => {
  let tmp = "";
  let net: PrivateNetwork | undefined;
  const services: Service[] = [];
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-locked-down-"));
  });
  after(async () => {
    for (const s of services.reverse()) {
      s.child.kill("SIGTERM");
      await s.exited;
    }
    await net?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "installs over the one port from the control plane, then from the site's bucket; replicates to a PIT; the firewall drops nothing",
    { timeout: 300_000 },
    async (t) => {
      if (!requireCapability(t, "netns", "loop", "tracefs", "fsfreeze")) return;
      const missing = haproxyMissing();
      if (missing) {
        if (strictCapabilities) assert.fail(missing);
        t.skip(missing);
        return;
      }
      const s3Name = "s3.drsite.lifeboat.test";
      net = await createPrivateNetwork({ names: [s3Name] });
      const n = net;
      const pki = sitePki(tmp, s3Name);
      await n.trust(await readFile(pki.ca, "utf8"));

      const dataDir = path.join(tmp, "server");
      const init = await lifeboat([
        "server",
        "init",
        "--data-dir",
        dataDir,
        "--hostname",
        n.hostName,
        "--hostname",
        n.recoveryAddress,
        "--listen",
        CONTROL_PLANE,
      ]);
      assert.equal(init.code, 0, init.stderr);
      const server = n.service(n.recovery, ["server", "start", "--data-dir", dataDir]);
      services.push(server);
      const bucketDir = path.join(tmp, "bucket");
      await mkdir(bucketDir);
      const bucket = "software";
      const s3 = n.spawn(n.recovery, process.execPath, [
        S3_MAIN,
        "--dir",
        bucketDir,
        "--bucket",
        bucket,
        "--port",
        String(S3_PORT),
        "--key",
        pki.key,
        "--cert",
        pki.cert,
        "--service-endpoint",
        n.hostName,
      ]);
      services.push(s3);
      const frontFile = path.join(tmp, "haproxy.cfg");
      await writeFile(frontFile, frontConfig(n.recoveryAddress, s3Name));
      const front = n.spawn(n.recovery, "haproxy", ["-db", "-f", frontFile]);
      services.push(front);

      const endpoint = `https://${n.recoveryAddress}:443`;
      const caFile = path.join(dataDir, "ca.pem");
      const operator = [
        "--endpoint",
        endpoint,
        "--ca-file",
        caFile,
        "--api-key-file",
        path.join(dataDir, "admin-api.key"),
      ];
      // The operator works from the recovery site, through the front like everyone.
      for (let i = 0; ; i++) {
        const r = await n.lifeboat(n.recovery, ["servers", "list", ...operator, "--json"]);
        if (r.code === 0) break;
        if (i > 100)
          assert.fail(`the site did not start: ${r.stderr}\n${server.log()}\n${front.log()}\n${s3.log()}`);
        await sleep(200);
      }
      const tokenFile = path.join(tmp, "agent.token");
      const token = await n.lifeboat(n.recovery, ["token", "create", ...operator, "--out", tokenFile]);
      assert.equal(token.code, 0, token.stderr);
      const fingerprint = formatFingerprint(certFingerprint(await readFile(caFile, "utf8")));

      const disk = await loopDiskForTest(t, { sizeMiB: 96 });
      spawnSync("sh", ["-c", `head -c 16M /dev/urandom > ${disk.mountPoint}/data && sync`]);
      // The operator builds the signed bundle (plain JavaScript: this host has Node); the server serves it.
      const bundle = await lifeboat(["bundle", "build", "--data-dir", dataDir, "--no-sea"]);
      assert.equal(bundle.code, 0, bundle.stderr);
      // ... and publishes it to the site's bucket, from the recovery site, credentials in the environment.
      const publish = await n.lifeboat(
        n.recovery,
        [
          "bundle",
          "publish",
          "--data-dir",
          dataDir,
          "--s3-endpoint",
          `https://127.0.0.1:${S3_PORT}`,
          "--bucket",
          bucket,
          "--prefix",
          "lifeboat/agent",
        ],
        {
          env: {
            AWS_ACCESS_KEY_ID: "S3RVER",
            AWS_SECRET_ACCESS_KEY: "S3RVER",
            AWS_REGION: "us-east-1",
            NODE_EXTRA_CA_CERTS: pki.ca,
          },
        },
      );
      assert.equal(publish.code, 0, publish.stdout + publish.stderr + s3.log());

      // On the source: fetch install.sh over the one port, then let it fetch, verify and install the rest.
      const site = `https://${n.hostName}:443`;
      const fromBucket = `https://${s3Name}:443/${bucket}/lifeboat/agent/`;
      const work = path.join(tmp, "source");
      await mkdir(work);
      const fetched = await n.exec(n.source, "curl", [
        "-fsSk",
        "-o",
        `${work}/install.sh`,
        `${site}/downloads/agent/install.sh`,
      ]);
      assert.equal(fetched.code, 0, fetched.stderr);
      const prefix = path.join(work, "opt");
      const configDir = path.join(work, "etc");
      const units = path.join(work, "units");
      const installSh = async (
        what: string,
        dirs: { prefix: string; configDir: string; units: string },
        from?: string,
      ) => {
        const started = Date.now();
        const r = await n.exec(n.source, "sh", [
          `${work}/install.sh`,
          "--endpoint",
          site,
          "--ca-fingerprint",
          fingerprint,
          "--token-file",
          tokenFile,
          ...(from ? ["--from", from] : []),
          "--devices",
          disk.device,
          "--no-prompt",
          "--no-systemd",
          "--prefix",
          dirs.prefix,
          "--config-dir",
          dirs.configDir,
          "--unit-dir",
          dirs.units,
          "--runtime",
          "node",
        ]);
        t.diagnostic(`install.sh, ${what}: ${Date.now() - started} ms`);
        return { ...r, out: r.stdout + r.stderr };
      };
      const install = await installSh("from the control plane", { prefix, configDir, units });
      assert.equal(install.code, 0, install.out);
      assert.match(install.out, /ok {3}manifest signed by the release key/);
      const uninstall = () =>
        n.exec(n.source, "sh", [
          `${work}/install.sh`,
          "uninstall",
          "--prefix",
          prefix,
          "--config-dir",
          configDir,
        ]);
      const continuous = async () => {
        let status: AgentStatus | undefined;
        for (let i = 0; status?.state !== "CONTINUOUS"; i++) {
          if (i > 400)
            assert.fail(
              `the agent did not reach CONTINUOUS: ${JSON.stringify(status)}\n${await readFile(path.join(prefix, "agent.log"), "utf8").catch(() => "")}`,
            );
          await sleep(250);
          const r = await lifeboat(["agent", "status", "--config-dir", configDir, "--json"]);
          if (r.code === 0) status = JSON.parse(r.stdout) as AgentStatus;
        }
        return status;
      };
      try {
        const servers = await n.lifeboat(n.recovery, ["servers", "list", ...operator, "--json"]);
        const serverName = (JSON.parse(servers.stdout) as { servers: { name: string }[] }).servers[0]!.name;
        const status = await continuous();
        assert.equal(status.tracker, "trace");
        await writeFile(path.join(disk.mountPoint!, "after-sync"), "written after the initial sync\n");
        const pit = await n.lifeboat(n.recovery, [
          "pits",
          "create",
          serverName,
          ...operator,
          "--json",
          "--timeout",
          "2m",
        ]);
        assert.equal(pit.code, 0, pit.stderr);
        assert.equal((JSON.parse(pit.stdout) as { consistency: string }).consistency, "filesystem");

        // Again, over the first installation, from the site's bucket (through the front, by its
        // name, checked with the site CA in the system store): the same chain, the same server.
        const pidFile = path.join(prefix, "agent.pid");
        const firstPid = (await readFile(pidFile, "utf8")).trim();
        const again = await installSh(
          "from the bucket, over the first",
          { prefix, configDir, units },
          fromBucket,
        );
        assert.equal(again.code, 0, again.out);
        assert.ok(again.out.includes(`verifying the bundle from ${fromBucket}`), again.out);
        assert.match(again.out, /ok {3}CA certificate matches the pinned fingerprint/);
        assert.match(again.out, /ok {3}release certificate issued by the CA/);
        assert.match(again.out, /ok {3}manifest signed by the release key/);
        assert.match(again.out, /ok {3}\d+ files match the manifest/);
        assert.match(again.out, /already registered/);
        const secondPid = (await readFile(pidFile, "utf8")).trim();
        assert.notEqual(secondPid, firstPid, "the agent was restarted from the new files");
        process.kill(Number(secondPid), 0);
        await continuous();

        // One byte of one object in the bucket changed (by whoever can write there): refused, nothing installed.
        const victim = "package.json";
        const original = await readFile(path.join(dataDir, "downloads", "agent", victim));
        const tampered = Buffer.from(original);
        tampered[0] = tampered[0]! ^ 0x20;
        const tamperedFile = path.join(tmp, "tampered");
        await writeFile(tamperedFile, tampered);
        const put = await n.exec(n.recovery, "curl", [
          "-fsS",
          "--cacert",
          pki.ca,
          "-X",
          "PUT",
          "--data-binary",
          `@${tamperedFile}`,
          `https://127.0.0.1:${S3_PORT}/${bucket}/lifeboat/agent/${victim}`,
        ]);
        assert.equal(put.code, 0, put.stderr);
        const fresh = {
          prefix: path.join(work, "opt2"),
          configDir: path.join(work, "etc2"),
          units: path.join(work, "units2"),
        };
        const refused = await installSh("from the tampered bucket", fresh, fromBucket);
        assert.notEqual(refused.code, 0, refused.out);
        assert.match(
          refused.out,
          new RegExp(`file ${victim.replace(".", "\\.")} does not match its manifest`),
        );
        assert.match(refused.out, /nothing was installed/);
        for (const p of Object.values(fresh)) assert.equal(existsSync(p), false, `${p} not created`);
      } finally {
        const u = await uninstall();
        assert.equal(u.code, 0, u.stdout + u.stderr);
      }
      for (const p of [prefix, configDir]) assert.equal(existsSync(p), false, `${p} removed`);
      const dropped = await n.dropped();
      assert.deepEqual(dropped, { out: 0, in: 0 }, "the firewall saw no attempt to reach anything else");

      // The doctor, on the source: a wrong CA fingerprint fails at the TLS step (over the allowed port).
      type Report = { ok: boolean; steps: { name: string; status: string; hint?: string }[] };
      const doctor = async (url: string, fp: string) => {
        const r = await n.lifeboat(n.source, [
          "doctor",
          "--endpoint",
          url,
          "--ca-fingerprint",
          fp,
          "--timeout",
          "2s",
          "--json",
        ]);
        return { code: r.code, report: JSON.parse(r.stdout) as Report, stderr: r.stderr };
      };
      const wrong = await doctor(site, "AB".repeat(32));
      assert.notEqual(wrong.code, 0);
      assert.equal(
        wrong.report.steps.find((x) => x.name === "tls")?.status,
        "fail",
        JSON.stringify(wrong.report),
      );
      assert.equal(wrong.report.steps.find((x) => x.name === "tcp")?.status, "ok");
      assert.deepEqual(await n.dropped(), { out: 0, in: 0 }, "the doctor used only the allowed port");
      // ... and a port the firewall drops fails at the TCP step with the firewall hint, and is counted.
      const droppedPort = await doctor(`https://${n.hostName}:8443`, fingerprint);
      assert.notEqual(droppedPort.code, 0);
      const tcp = droppedPort.report.steps.find((x) => x.name === "tcp");
      assert.equal(tcp?.status, "fail", JSON.stringify(droppedPort.report));
      assert.match(tcp?.hint ?? "", /firewall/i);
      assert.ok((await n.dropped()).out >= 1, "the firewall counted the dropped attempt");
    },
  );
});
