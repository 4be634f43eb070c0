import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Agent, fetch as undiciFetch } from "undici";
import { recordPit } from "../../src/control/catalog.js";
import { loadConfig } from "../../src/control/config.js";
import { type Database, openDatabase } from "../../src/control/db/index.js";
import { materializePit } from "../../src/launch/index.js";
import {
  type Pit,
  type Repository,
  entryLocation,
  exportDisk,
  importDisks,
  walkBlockMap,
} from "../../src/store/index.js";
import { systemClock } from "../../src/base/index.js";
import { logJobStep } from "../../src/control/jobs.js";
import { lifeboatService, runLifeboat } from "../support/cli.js";
import { until } from "../support/pit-check.js";
import { type AgentIdentity, type Site, startSite } from "../support/lifeboat-site.js";
import {
  BASE_TOOLS,
  DEBIAN_OS,
  grubFor,
  makeDisk,
  makeInitramfs,
  requires,
  writeRootTree,
} from "../launch/fixtures.js";

const run = promisify(execFile);
const V = "6.1.0-13-amd64";
const ROOT_UUID = "0e6a2f5c-1111-4222-8333-944455556666";
const DATA_UUID = "5d1c0f3e-2222-4333-8444-a55566667777";

interface JobView {
  id: string;
  state: string;
  result: Record<string, unknown> | null;
}

const sha256 = async (file: string) =>
  createHash("sha256")
    .update(await fs.readFile(file))
    .digest("hex");

/**
 * Launch from a PIT on a running control plane: a two-disk server (GPT boot
 * disk with an installed system, whole-disk ext4 data disk) imported into the
 * server's repository, then launched as drills through the API and the CLI.
 */
void describe(
  "launch to the image target",
  requires({ tools: [...BASE_TOOLS, "e2fsck"], root: true }),
  () => {
    let work = "";
    let site: Site;
    let database: Database;
    let repo: Repository;
    let pit: Pit;
    let serverId = "";
    let identity: AgentIdentity;
    const disks: string[] = [];

    before(async () => {
      work = await fs.mkdtemp(path.join(os.tmpdir(), "lifeboat-launch-"));
      site = await startSite(work);
      const who = await site.register("app-01");
      serverId = who.serverId;
      const tree = path.join(work, "root");
      const initramfs = await makeInitramfs(work, {
        version: V,
        modules: ["virtio_blk.ko", "virtio_scsi.ko", "virtio_net.ko", "ext4.ko"],
        compression: "zstd",
      });
      await writeRootTree(tree, {
        osRelease: DEBIAN_OS,
        fstab: `UUID=${ROOT_UUID} / ext4 errors=remount-ro 0 1\nUUID=${DATA_UUID} /srv ext4 defaults 0 2\n`,
        kernels: [{ version: V, initramfs }],
        grub: grubFor(V, ROOT_UUID),
      });
      // The protected server's real agent identity, as `agent install` leaves it.
      identity = who;
      const agentDir = path.join(tree, "etc/lifeboat/agent");
      await fs.mkdir(agentDir, { recursive: true, mode: 0o700 });
      await fs.writeFile(path.join(agentDir, "agent.key"), who.keyPem, { mode: 0o600 });
      await fs.writeFile(path.join(agentDir, "agent.pem"), who.certPem, { mode: 0o600 });
      await fs.writeFile(path.join(agentDir, "ca.pem"), site.caPem, { mode: 0o600 });
      await fs.writeFile(
        path.join(agentDir, "config.json"),
        JSON.stringify({ server: who.serverName, serverId: who.serverId }),
        { mode: 0o600 },
      );
      await fs.writeFile(path.join(tree, "etc/hostname"), "app-01\n");
      const data = path.join(work, "data");
      await fs.mkdir(data);
      await fs.writeFile(path.join(data, "orders.db"), Buffer.alloc(3 << 20, 7));
      disks.push(path.join(work, "boot.img"), path.join(work, "data.img"));
      await makeDisk(disks[0]!, "gpt", [
        { sizeMiB: 24, type: "linux", fs: "ext4", uuid: ROOT_UUID, dir: tree },
      ]);
      await makeDisk(disks[1]!, "none", [
        { sizeMiB: 16, type: "linux", fs: "ext4", uuid: DATA_UUID, dir: data },
      ]);
      repo = await site.openRepo();
      pit = (await importDisks(repo, { server: who.serverName, disks, consistency: "filesystem" })).pit;
      const config = await loadConfig(path.join(site.dataDir, "config.json"));
      database = await openDatabase(config.databaseUrl);
      await recordPit(database, repo.config.id, serverId, pit);
    });
    after(async () => {
      await database?.close();
      await repo?.close();
      await site?.close();
      await fs.rm(work, { recursive: true, force: true });
    });

    async function waitJob(id: string): Promise<JobView> {
      for (let i = 0; i < 600; i++) {
        const { job } = await site.api<{ job: JobView }>(`/api/v1/jobs/${id}`);
        if (["succeeded", "failed", "terminated"].includes(job.state)) return job;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`job ${id} did not finish`);
    }

    void it("a drill writes byte-identical images, a manifest whose hashes match, and a report; terminate removes them", async () => {
      const { job } = await site.api<{ job: JobView }>("/api/v1/launches", {
        method: "POST",
        body: { servers: ["app-01"], pit: "latest" },
      });
      const done = await waitJob(job.id);
      assert.equal(done.state, "succeeded", JSON.stringify(done.result));
      const outputs = (done.result as { outputs: { images: string[]; manifest: string; report: string } })
        .outputs;
      const dir = path.join(site.dataDir, "launches", "app-01", job.id);
      assert.deepEqual(outputs.images, [path.join(dir, "disk-0.img"), path.join(dir, "disk-1.img")]);
      const exported = [0, 1].map((i) => path.join(work, `export-${i}.img`));
      for (const i of [0, 1]) await exportDisk(repo, pit, i, exported[i]!, { overwrite: true });
      // The data disk is the PIT's bytes; the boot disk was prepared (identity, hostname): only by what was logged.
      assert.ok(
        (await fs.readFile(outputs.images[1]!)).equals(await fs.readFile(disks[1]!)),
        "disk 1 is the source's bytes",
      );
      assert.ok(
        (await fs.readFile(outputs.images[1]!)).equals(await fs.readFile(exported[1]!)),
        "disk 1 equals store export",
      );
      assert.ok(
        (await fs.readFile(exported[0]!)).equals(await fs.readFile(disks[0]!)),
        "store export of disk 0 is the source",
      );
      await run("e2fsck", ["-fn", outputs.images[1]!]);
      // The prepared boot disk's root filesystem (partition 1, 1 MiB in) is clean too.
      const loop = (
        await run("losetup", ["--find", "--show", "--offset", String(1 << 20), outputs.images[0]!])
      ).stdout.trim();
      try {
        await run("e2fsck", ["-fn", loop]);
      } finally {
        await run("losetup", ["-d", loop]);
      }
      const manifest = JSON.parse(await fs.readFile(outputs.manifest, "utf8")) as {
        pit: { id: string };
        disks: { file: string; sha256: string; sizeBytes: number; launchedSha256?: string }[];
      };
      assert.equal(manifest.pit.id, pit.id);
      for (const [i, d] of manifest.disks.entries()) {
        assert.equal(d.sha256, await sha256(exported[i]!), "the PIT's hash");
        assert.equal(
          d.launchedSha256 ?? d.sha256,
          await sha256(path.join(dir, d.file)),
          "the launched file's hash",
        );
      }
      assert.ok(manifest.disks[0]!.launchedSha256, "the boot disk was changed by the preparation");
      await checkNoIdentity(outputs.images[0]!);
      const report = JSON.parse(await fs.readFile(outputs.report, "utf8")) as {
        outcome: string;
        readiness: { ready: boolean };
        steps: { name: string; ok: boolean }[];
        recoverySeconds: number;
        pit: { consistency: string };
      };
      assert.equal(report.outcome, "succeeded");
      assert.equal(report.pit.consistency, "filesystem");
      assert.equal(report.readiness.ready, true, "virtio drivers present: ready for kvm");
      assert.ok(report.steps.every((s) => s.ok));
      assert.ok(report.recoverySeconds > 0);
      assert.match(await fs.readFile(path.join(dir, "report.html"), "utf8"), /Drill of app-01: succeeded/);

      const t = await site.api<{ job: JobView }>(`/api/v1/jobs/${job.id}/terminate`, {
        method: "POST",
        body: {},
      });
      assert.notEqual(t.job.state, "running");
      for (let i = 0; i < 100 && (await waitJob(job.id)).state !== "terminated"; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.equal((await waitJob(job.id)).state, "terminated");
      await assert.rejects(fs.stat(dir), /ENOENT/, "the drill's directory is gone");
    });

    /** The launched boot disk holds no usable agent identity: no key bytes anywhere, a marker the agent refuses. */
    async function checkNoIdentity(image: string) {
      const bytes = await fs.readFile(image);
      const keyLine = identity.keyPem.split("\n")[1]!;
      assert.ok(keyLine.length > 40);
      assert.notEqual((await fs.readFile(disks[0]!)).indexOf(keyLine), -1, "the source disk holds the key");
      assert.equal(
        bytes.indexOf(keyLine),
        -1,
        "the private key's bytes are nowhere on the launched disk, free blocks included",
      );
      const mnt = await fs.mkdtemp(path.join(work, "mnt-"));
      await run("mount", ["-o", `ro,loop,offset=${1 << 20}`, image, mnt]);
      try {
        const agentDir = path.join(mnt, "etc/lifeboat/agent");
        await assert.rejects(fs.stat(path.join(agentDir, "agent.key")), /ENOENT/);
        await assert.rejects(fs.stat(path.join(agentDir, "agent.pem")), /ENOENT/);
        assert.equal((await fs.readFile(path.join(mnt, "etc/hostname"), "utf8")).trim(), "app-01-drill");
        assert.match(await fs.readFile(path.join(agentDir, "config.json"), "utf8"), /launchedCopy/);
        // The agent refuses to start with what the copy holds.
        const r = await runLifeboat(["agent", "run", "--config-dir", agentDir], work);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /AGENT_LAUNCHED_COPY|launched copy/);
      } finally {
        await run("umount", [mnt]);
      }
      // No certificate is left to present: the agent routes refuse the copy.
      const dispatcher = new Agent({ connect: { ca: site.caPem } });
      try {
        const res = await undiciFetch(`${site.url}/api/v1/agent/settings`, { dispatcher });
        assert.equal(res.status, 401);
      } finally {
        await dispatcher.close();
      }
    }

    void it("lifeboat launch --json prints the finished job, its outputs and readiness", async () => {
      const keyFile = path.join(work, "admin.key");
      await fs.writeFile(keyFile, site.adminKey, { mode: 0o600 });
      const caFile = path.join(site.dataDir, "ca.pem");
      const r = await runLifeboat(
        [
          "launch",
          "app-01",
          "--profile",
          "xen",
          "--json",
          "--endpoint",
          site.url,
          "--ca-file",
          caFile,
          "--api-key-file",
          keyFile,
        ],
        work,
      );
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as {
        job: JobView;
        outputs: { images: string[]; manifest: string; report: string };
        readiness: {
          ready: boolean;
          servers: Record<string, { ready: boolean; problems: { message: string }[] }>;
        };
      };
      assert.equal(out.job.state, "succeeded");
      assert.equal(out.outputs.images.length, 2);
      assert.equal(out.readiness.ready, false, "the image target reports readiness problems without failing");
      assert.match(JSON.stringify(out.readiness.servers["app-01"]!.problems), /xen-blkfront/);
      const logs = await runLifeboat(
        ["jobs", "logs", out.job.id, "--endpoint", site.url, "--ca-file", caFile, "--api-key-file", keyFile],
        work,
      );
      assert.equal(logs.code, 0, logs.stderr);
      assert.match(logs.stdout, /materialize/);
      assert.match(logs.stdout, /succeeded/);
    });

    void it("jobs logs --follow prints lines as they come and exits with the job's outcome", async () => {
      const keyFile = path.join(work, "admin.key");
      await fs.writeFile(keyFile, site.adminKey, { mode: 0o600 });
      // A PIT request waits for the server's agent, which does not run here: the job stays open.
      const asked = await site.api<{ jobId: string }>(`/api/v1/servers/${serverId}/pits`, {
        method: "POST",
        body: { consistency: "crash" },
      });
      const follower = lifeboatService([
        "jobs",
        "logs",
        asked.jobId,
        "--follow",
        "--endpoint",
        site.url,
        "--ca-file",
        path.join(site.dataDir, "ca.pem"),
        "--api-key-file",
        keyFile,
      ]);
      let exited = false;
      void follower.exited.then(() => (exited = true));
      try {
        for (const step of ["first step of the follow test", "second step of the follow test"]) {
          await logJobStep(database, systemClock, asked.jobId, { message: step });
          await until(
            `the follower printed "${step}"`,
            () => follower.log().includes(step),
            20_000,
            () => follower.log(),
          );
          assert.equal(exited, false, "still following a running job");
        }
        await logJobStep(database, systemClock, asked.jobId, {
          message: "the follow test gives up",
          state: "failed",
        });
        assert.equal(await follower.exited, 1, "a failed job: exit 1");
        assert.match(follower.log(), /first step[^]*second step[^]*gives up/);
      } finally {
        follower.child.kill();
      }
    });

    void it("a corrupted chunk fails the job naming the disk and byte range; no manifest; a rerun resumes", async () => {
      const entries: Buffer[] = [];
      await walkBlockMap(repo, pit.disks[1]!, (i, e) => void (entries[i] = Buffer.from(e)));
      const slot = entries.findIndex((e) => e !== undefined);
      const loc = entryLocation(entries[slot]!);
      const packFile = path.join(site.dataDir, "repo", repo.packName(loc.pack));
      const original = await fs.readFile(packFile);
      const damaged = Buffer.from(original);
      damaged[loc.offset + Math.floor(loc.length / 2)]! ^= 0x40;
      await fs.chmod(packFile, 0o600);
      await fs.writeFile(packFile, damaged);
      try {
        const { job } = await site.api<{ job: JobView }>("/api/v1/launches", {
          method: "POST",
          body: { servers: [serverId] },
        });
        const done = await waitJob(job.id);
        assert.equal(done.state, "failed");
        const error = (done.result as { error: { message: string } }).error;
        const cs = pit.disks[1]!.chunkSize;
        assert.match(error.message, new RegExp(`disk 1 of PIT ${pit.id}`));
        assert.match(error.message, new RegExp(`bytes ${slot * cs}-${(slot + 1) * cs - 1}`));
        const dir = path.join(site.dataDir, "launches", "app-01", job.id);
        await assert.rejects(fs.stat(path.join(dir, "manifest.json")), /ENOENT/);
        await assert.rejects(
          fs.stat(path.join(dir, "disk-1.img")),
          /ENOENT/,
          "no partial disk under the final name",
        );
        const report = JSON.parse(await fs.readFile(path.join(dir, "report.json"), "utf8")) as {
          outcome: string;
        };
        assert.equal(report.outcome, "failed");

        // The same directory again (a resumed job): disk 0 is kept, disk 1 written now that the pack is whole.
        await fs.writeFile(packFile, original);
        const lines: string[] = [];
        const again = await materializePit(repo, pit, dir, job.id, { log: (m) => lines.push(m) });
        assert.deepEqual(
          again.disks.map((d) => d.resumed),
          [true, false],
        );
        assert.ok(lines.some((l) => /disk 0: kept/.test(l)));
        assert.ok((await fs.readFile(again.disks[1]!.path)).equals(await fs.readFile(disks[1]!)));
      } finally {
        await fs.writeFile(packFile, original);
      }
    });

    void it("inspect --server --pit reads the PIT from the repository and says whether it would boot", async () => {
      const ok = await runLifeboat(
        ["inspect", "--server", "app-01", "--pit", pit.id, "--data-dir", site.dataDir, "--json"],
        work,
      );
      assert.equal(ok.code, 0, ok.stderr);
      const report = JSON.parse(ok.stdout) as { ready: boolean; pit: { id: string }; disks: unknown[] };
      assert.equal(report.ready, true);
      assert.equal(report.pit.id, pit.id);
      assert.equal(report.disks.length, 2);
      const xen = await runLifeboat(
        ["inspect", "--server", "app-01", "--profile", "xen", "--data-dir", site.dataDir],
        work,
      );
      assert.equal(xen.code, 1, "not ready for xen: exit 1");
      assert.match(xen.stdout, /xen-blkfront/);
    });

    void it("refuses clearly: an unknown server, a PIT of another server, out without admin", async () => {
      const bad = async (body: unknown) => {
        try {
          await site.api("/api/v1/launches", { method: "POST", body });
          return null;
        } catch (err) {
          return err as { code?: string; status?: number };
        }
      };
      assert.equal((await bad({ servers: ["nope"] }))?.code, "SERVER_NOT_FOUND");
      assert.equal(
        (await bad({ servers: ["app-01"], pit: "0123456789abcdef01234567" }))?.code,
        "PIT_NOT_FOUND",
      );
      assert.equal((await bad({ servers: ["app-01"], target: "floppy" }))?.code !== undefined, true);
    });
  },
);
