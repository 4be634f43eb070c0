import { constants, promises as fs } from "node:fs";
import type { Accel } from "./qemu-args.js";

/**
 * The accelerator for "auto": KVM when /dev/kvm opens for reading and
 * writing (the module is loaded and we may use it), else TCG, QEMU's
 * emulator (slow but works everywhere). A host whose KVM opens but does not
 * run guests (some nested setups) needs accel "tcg" given explicitly.
 */
export async function chooseAccel(wanted: "auto" | Accel): Promise<Accel> {
  if (wanted !== "auto") return wanted;
  try {
    const fh = await fs.open("/dev/kvm", constants.O_RDWR);
    await fh.close();
    return "kvm";
  } catch {
    return "tcg";
  }
}
