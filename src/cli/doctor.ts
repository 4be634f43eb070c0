import type { Command } from "commander";
import { LifeboatError } from "../base/index.js";
import type { DoctorReport } from "../net/index.js";
import { parseDuration } from "./context.js";
import { type DoctorOpts, buildDoctorCommand } from "./doctor-command.js";

/** `lifeboat doctor` of the full CLI: the connectivity doctor and `--server` (doctor-command.ts). */
export function doctorCommand(): Command {
  return buildDoctorCommand(serverSide);
}

/** `doctor --server [--data-dir D | --config F]`: the control plane's code is loaded only here. */
async function serverSide(o: DoctorOpts): Promise<DoctorReport> {
  const { DEFAULT_DATA_DIR, dataPaths, loadConfig } = await import("../control/index.js");
  const { runServerDoctor } = await import("../control/server-doctor.js");
  if (o.dataDir !== undefined && o.config !== undefined)
    throw new LifeboatError("USAGE", "give --data-dir or --config, not both", { exitCode: 2 });
  const file = o.config ?? dataPaths(o.dataDir ?? DEFAULT_DATA_DIR).config;
  return runServerDoctor(await loadConfig(file), { timeoutMs: parseDuration(o.timeout, "--timeout") });
}
