/**
 * What a preparation did to a copy, one line a change: each line goes to the
 * job's log as it happens and is returned in `changes`, so that an operator
 * sees exactly what a launched copy differs in from the PIT it came from.
 */
export class ChangeLog {
  readonly changes: string[] = [];

  constructor(readonly log: (level: "info" | "warn" | "error", message: string) => void) {}

  change(message: string): void {
    this.changes.push(message);
    this.log("info", message);
  }

  info(message: string): void {
    this.log("info", message);
  }

  warn(message: string): void {
    this.log("warn", message);
  }
}
