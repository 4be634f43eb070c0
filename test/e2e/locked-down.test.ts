/**
 * The situation Lifeboat exists for, in network namespaces: a source server
 * with no default route and no DNS server, behind a firewall that lets
 * through only TCP 443 to the recovery site's private address and drops and
 * counts everything else; the control plane and its embedded replicator in a
 * `recovery` namespace. The agent installs with a pinned CA fingerprint and
 * an install token from a file, reaches the site by a name from its hosts
 * file, and replicates an ext4 loop device to a filesystem-consistent PIT.
 * The firewall's drop counter must stay at zero: nothing on the source tried
 * to reach anything but the recovery site's one port. Then the doctor on the
 * source: a wrong CA fingerprint fails at the TLS step, and a port the
 * firewall drops fails at the TCP step with the firewall hint (and is
 * counted).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentStatus } from "../../src/agent/index.js";
import { certFingerprint, formatFingerprint } from "../../src/net/index.js";
import { requireCapability, skipUnless } from "../support/capabilities.js";
import { lifeboat } from "../support/cli.js";
import { loopDiskForTest } from "../support/loop-disk.js";
import { type PrivateNetwork, createPrivateNetwork } from "../support/private-network.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void describe("a source server in a locked-down network", skipUnless("netns", "loop", "tracefs"), () => {
  let tmp = "";
  let net: PrivateNetwork | undefined;
  let server: ReturnType<PrivateNetwork["service"]> | undefined;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "lifeboat-locked-down-"));
  });
  after(async () => {
    server?.child.kill("SIGTERM");
    await server?.exited;
    await net?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  void it(
    "installs with a pinned CA over the one port and replicates to a PIT; the firewall drops nothing",
    { timeout: 300_000 },
    async (t) => {
      if (!requireCapability(t, "netns", "loop", "tracefs", "fsfreeze")) return;
      net = await createPrivateNetwork();
      const n = net;
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
        `${n.recoveryAddress}:443`,
      ]);
      assert.equal(init.code, 0, init.stderr);
      server = n.service(n.recovery, ["server", "start", "--data-dir", dataDir]);
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
      // The operator works from the recovery site.
      for (let i = 0; ; i++) {
        const r = await n.lifeboat(n.recovery, ["servers", "list", ...operator, "--json"]);
        if (r.code === 0) break;
        if (i > 100) assert.fail(`the server did not start: ${r.stderr}\n${server.log()}`);
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

      // On the source: fetch install.sh over the one port, then let it fetch, verify and install the rest.
      const site = `https://${n.hostName}:443`;
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
      const install = await n.exec(n.source, "sh", [
        `${work}/install.sh`,
        "--endpoint",
        site,
        "--ca-fingerprint",
        fingerprint,
        "--token-file",
        tokenFile,
        "--devices",
        disk.device,
        "--no-prompt",
        "--no-systemd",
        "--prefix",
        prefix,
        "--config-dir",
        configDir,
        "--unit-dir",
        path.join(work, "units"),
        "--runtime",
        "node",
      ]);
      assert.equal(install.code, 0, install.stdout + install.stderr);
      assert.match(install.stdout + install.stderr, /verif/i);
      const uninstall = () =>
        n.exec(n.source, "sh", [
          `${work}/install.sh`,
          "uninstall",
          "--prefix",
          prefix,
          "--config-dir",
          configDir,
        ]);
      try {
        const servers = await n.lifeboat(n.recovery, ["servers", "list", ...operator, "--json"]);
        const serverName = (JSON.parse(servers.stdout) as { servers: { name: string }[] }).servers[0]!.name;
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
      } finally {
        const u = await uninstall();
        assert.equal(u.code, 0, u.stdout + u.stderr);
      }
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
