/**
 * The disks' generation ids that the agent names in every HELLO, kept in
 * D/state/generations.json (state-files.ts reads it). The control plane's
 * are adopted while the agent has none yet; a failback that ends ready
 * replaces them with the generations of the data it wrote.
 */
import path from "node:path";
import { writeFileAtomic } from "../base/index.js";
import { type DiskGeneration, readGenerations } from "./state-files.js";

export class DiskGenerations {
  private constructor(
    private readonly file: string,
    private list: DiskGeneration[],
  ) {}

  /** What D/state/generations.json holds (none when it is missing or unsound). */
  static async load(stateDir: string): Promise<DiskGenerations> {
    const file = path.join(stateDir, "generations.json");
    return new DiskGenerations(file, await readGenerations(file));
  }

  /** The disks' generation ids, for the engine's HELLO (they change with a failback). */
  current(): DiskGeneration[] {
    return this.list;
  }

  /** Keeps the control plane's generations when the agent has none yet (a failback's replace them: save). */
  async adopt(g: DiskGeneration[] | undefined): Promise<void> {
    if (!g || g.length === 0 || this.list.length > 0) return;
    await this.save(g);
  }

  /** Writes `g` to the file, then takes it as the current generations. */
  async save(g: DiskGeneration[]): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(g)}\n`, { mode: 0o600 });
    this.list = g;
  }
}
