/**
 * The recovery time of a drill end to end, for the launch benchmark
 * (bench/launch.ts): a real `lifeboat server start` (bench/replication-site.ts)
 * with one registered server whose PIT is IMAGE (imported into the server's
 * repository and catalogued as `store import` and `store reindex` do), then a
 * drill to the image target through the API, timed from the request to the
 * job's success:
 *
 *   node dist/bench/launch-drill.js --image IMAGE --work DIR
 *
 * Prints one JSON line: wall seconds from POST /api/v1/launches to the
 * finished job, the report's recovery time and steps, and the drill's image.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { createApiDispatcher, fetchJson } from "../src/net/index.js";
import { startServerChild } from "./replication-site.js";
import { ROOT, run } from "./sys.js";

const CLI = path.join(ROOT, "bin", "lifeboat.js");
const { values } = parseArgs({ options: { image: { type: "string" }, work: { type: "string" } } });
if (!values.image || !values.work) throw new Error("usage: launch-drill.js --image IMAGE --work DIR");
const dataDir = path.join(values.work, "server");
const server = await startServerChild(dataDir);
try {
  const who = await server.register("bench-drill");
  const repoArgs = ["--repo", server.repo, "--key-file", path.join(dataDir, "keys", "repo.key")];
  run(process.execPath, [
    CLI,
    "store",
    "import",
    ...repoArgs,
    "--server",
    who.serverName,
    "--disk",
    values.image,
  ]);
  const config = JSON.parse(readFileSync(path.join(dataDir, "config.json"), "utf8")) as {
    databaseUrl: string;
  };
  run(process.execPath, [CLI, "store", "reindex", ...repoArgs, "--db", config.databaseUrl]);
  const url = server.url;
  const caPem = readFileSync(path.join(dataDir, "ca.pem"), "utf8");
  const auth = {
    authorization: `Bearer ${readFileSync(path.join(dataDir, "admin-api.key"), "utf8").trim()}`,
  };
  const d = createApiDispatcher({ caPem });
  try {
    run("sync", []);
    const t = performance.now();
    const { job } = await fetchJson<{ job: { id: string } }>(d, `${url}/api/v1/launches`, {
      headers: auth,
      body: { servers: [who.serverName], mode: "drill" },
    });
    let done: { state: string; result: Record<string, unknown> | null };
    for (;;) {
      done = (
        await fetchJson<{ job: typeof done }>(d, `${url}/api/v1/jobs/${job.id}`, {
          method: "GET",
          headers: auth,
        })
      ).job;
      if (["succeeded", "failed", "terminated"].includes(done.state)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const seconds = (performance.now() - t) / 1000;
    if (done.state !== "succeeded")
      throw new Error(`the drill ${job.id} ${done.state}: ${JSON.stringify(done.result)}`);
    const out = (done.result as { outputs: { servers: { images: string[]; report: string }[] } }).outputs
      .servers[0]!;
    const report = JSON.parse(readFileSync(out.report, "utf8")) as {
      recoverySeconds: number;
      steps: { name: string; seconds: number }[];
    };
    process.stdout.write(
      `${JSON.stringify({ seconds, recoverySeconds: report.recoverySeconds, steps: report.steps, image: out.images[0] })}\n`,
    );
  } finally {
    await d.close();
  }
} finally {
  await server.stop();
}
