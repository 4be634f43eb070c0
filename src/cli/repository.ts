import { Command } from "commander";
import { type ApiOpts, apiOptions, withApi } from "./api-client.js";
import { followJob, formatJobLine } from "./follow-job.js";
import { formatBytes, printJson, printLines } from "./output.js";
import { action } from "./store.js";

interface StatusView {
  stats: {
    at: string;
    location: string;
    pits: number;
    objects: { packs: number; pages: number; trash: number };
    storedBytes: { total: number };
  } | null;
  verify: {
    at: string;
    ok: boolean;
    readData: boolean;
    referencedChunks: number;
    damage: { objects: number; pits: number; servers: string[] };
    jobId: string | null;
    lastReadDataAt: string | null;
  } | null;
}

/**
 * `lifeboat repository status|verify`: the control plane's repository, over
 * the API (`lifeboat store ...` works on a repository directly instead).
 */
export function repositoryCommand(): Command {
  const repository = new Command("repository").description(
    "the control plane's repository: its size and verify results, over the API",
  );

  apiOptions(repository.command("status").description("size at the last refresh and the last verify")).action(
    action<ApiOpts>(async (ctx, o) => {
      const r = await withApi(ctx, o, (api) => api.call<StatusView>("/api/v1/repository"));
      if (ctx.json) return printJson(r);
      const s = r.stats;
      const v = r.verify;
      printLines([
        s
          ? `${s.location}: ${s.pits} PITs; ${s.objects.packs} packs, ${s.objects.pages} pages, ${s.objects.trash} in trash; ${formatBytes(s.storedBytes.total)} stored (at ${s.at})`
          : "size not measured yet",
        v
          ? `last verify ${v.at}${v.readData ? " (data read)" : " (structure)"}: ${v.ok ? "no damage" : `${v.damage.objects} damaged object(s), ${v.damage.pits} PIT(s) of ${v.damage.servers.join(", ")}`}; ${v.referencedChunks} chunks; data last read ${v.lastReadDataAt ?? "never"}`
          : "never verified",
      ]);
    }),
  );

  apiOptions(
    repository
      .command("verify")
      .description("verify the repository now, as a job on the server; exit 3 when it finds damage"),
  )
    .option("--read-data", "decrypt every referenced chunk and check it against its id")
    .option("--no-wait", "print the job and return without following it")
    .action(
      action<ApiOpts & { readData?: boolean; wait: boolean }>(async (ctx, o) =>
        withApi(ctx, o, async (api) => {
          const r = await api.call<{ job: { id: string; state: string }; created: boolean }>(
            "/api/v1/repository/verify",
            { method: "POST", body: { readData: Boolean(o.readData) } },
          );
          process.stderr.write(
            `${r.created ? "verify job" : "a verify already waits or runs:"} ${r.job.id}\n`,
          );
          if (!o.wait) {
            if (ctx.json) printJson(r);
            else printLines([r.job.id]);
            return 0;
          }
          const state = await followJob(api, r.job.id, (l) =>
            ctx.json ? printJson(l) : printLines([formatJobLine(l)]),
          );
          if (state === "succeeded") return 0;
          const status = await api.call<StatusView>("/api/v1/repository");
          return status.verify?.jobId === r.job.id && !status.verify.ok ? 3 : 1;
        }),
      ),
    );
  return repository;
}
