/**
 * /init of the failback boot environment (failback-image.ts), a busybox
 * shell script. Every line it says starts with `lifeboat-failback:`, for a
 * serial console (console=ttyS0) or a screen; the last is
 * `lifeboat-failback: ready` when the agent says the failback is ready, or
 * `lifeboat-failback: failed ...`. Kernel command line:
 *
 *   lifeboat.ip=ADDR/PREFIX[,GATEWAY]  a static address (default: DHCP with udhcpc)
 *   lifeboat.dns=ADDR                  a name server, with a static address
 *   lifeboat.iface=NAME                the network interface (default: the first one found)
 *   lifeboat.then=reboot|poweroff      what to do at the end (default: what the image was built with)
 *   lifeboat.shell=1                   a shell on the console before rebooting, to look around
 *
 * When the failback is ready, the failed-back disks hold the recovered
 * instance's files, its agent directory too. With \`restoreIdentity\` (the
 * agent directory's path on the server, /etc/lifeboat/agent by default),
 * /init mounts each filesystem of those disks in turn and, where it finds
 * that directory, puts the original server's back: the image's copy, with
 * the state (generations) the agent kept during the failback. The swap is
 * a rename inside the directory's parent, so a crash leaves one directory
 * or the other, never a mixture. The site verified the disks before this
 * change; it is the only one, and the console says where it was made.
 */

export interface FailbackInitOptions {
  then: "reboot" | "poweroff";
  /** The agent's executable and configuration directory in the image. */
  agent: string;
  configDir: string;
  /** The disk paths of the copied config.json, waited for before the agent starts. */
  disks: string[];
  serverName: string;
  /**
   * After a ready failback, put the original agent directory back at `dir`
   * (its absolute path on the server): the server's own config.json (kept
   * unchanged at `config` in the image, without the boot environment's
   * endpoint and disk names), the key and certificates, and the state the
   * agent kept during the failback (its new disk generations).
   */
  restoreIdentity?: { dir: string; config: string };
}

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

export function failbackInit(o: FailbackInitOptions): string {
  return `#!/bin/sh
# Lifeboat failback boot environment: receives a failback onto this server's disks.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ LIFEBOAT_LOG_LEVEL=info
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
say() { echo "lifeboat-failback: $*"; }
then=${quote(o.then)}
ip="" dns="" iface="" shell=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lifeboat.ip=*) ip="\${arg#lifeboat.ip=}" ;;
    lifeboat.dns=*) dns="\${arg#lifeboat.dns=}" ;;
    lifeboat.iface=*) iface="\${arg#lifeboat.iface=}" ;;
    lifeboat.then=*) then="\${arg#lifeboat.then=}" ;;
    lifeboat.shell=1) shell=1 ;;
  esac
done
finish() {
  sync
  if [ -n "$shell" ]; then say "a shell; exit it to $then"; setsid cttyhack sh; fi
  say "$then"
  if [ "$then" = poweroff ]; then poweroff -f; else reboot -f; fi
  sleep 5
  echo o > /proc/sysrq-trigger
}
say "starting for server ${o.serverName.replace(/[^A-Za-z0-9._-]/g, "?")} on kernel $(uname -r)"
for m in /lib/modules/load/*.ko; do
  [ -e "$m" ] || continue
  insmod "$m" 2>/dev/null || say "module $(basename "$m") not loaded"
done
for d in ${o.disks.map(quote).join(" ")}; do
  n=0
  while [ ! -e "$d" ] && [ $n -lt 60 ]; do sleep 0.5; n=$((n + 1)); done
  if [ -e "$d" ]; then say "disk $d present"; else say "disk $d not found (the agent reports it)"; fi
done
ip link set lo up
if [ -z "$iface" ]; then
  n=0
  while [ $n -lt 40 ]; do
    for f in /sys/class/net/*; do
      case "\${f##*/}" in lo|\\*) ;; *) iface="\${f##*/}"; break ;; esac
    done
    [ -n "$iface" ] && break
    sleep 0.5; n=$((n + 1))
  done
fi
if [ -z "$iface" ]; then
  say "failed: no network interface"
  finish
fi
ip link set "$iface" up
if [ -n "$ip" ]; then
  addr="\${ip%%,*}"
  ip addr add "$addr" dev "$iface"
  case "$ip" in *,*) ip route add default via "\${ip#*,}" dev "$iface" ;; esac
  [ -n "$dns" ] && echo "nameserver $dns" > /etc/resolv.conf
  say "network: $iface $addr (static)"
else
  say "network: $iface, asking DHCP"
  udhcpc -i "$iface" -s /etc/udhcpc.script -t 10 -T 3 -n -q -f >/dev/null 2>&1 || say "no DHCP lease on $iface"
  say "network: $(ip -o -4 addr show dev "$iface" | awk '{print $4}')"
fi
say "agent starting (receive mode only)"
${quote(o.agent)} agent run --failback-only --config-dir ${quote(o.configDir)}
rc=$?
sync
if [ $rc -eq 0 ]; then say "ready"; else say "failed: the agent exited with $rc"; fi
${o.restoreIdentity === undefined ? "" : restoreIdentityScript(o)}finish
`;
}

/** After a ready failback: the original agent directory back onto the filesystem that holds one. */
function restoreIdentityScript(o: FailbackInitOptions): string {
  const { dir, config } = o.restoreIdentity!;
  const rel = dir.replace(/^\/+|\/+$/g, "");
  if (rel === "" || rel.split("/").includes("..")) throw new Error(`not an agent directory path: ${dir}`);
  const from = o.configDir;
  return `restore_identity() {
  rel=${quote(rel)}
  mkdir -p /mnt/failed-back
  found=""
  for d in ${o.disks.map(quote).join(" ")}; do
    [ -b "$d" ] || continue
    blockdev --rereadpt "$d" 2>/dev/null
    sleep 1
    base=$(basename "$(readlink -f "$d")")
    for p in "$d" /dev/"$base"[0-9]* /dev/"$base"p[0-9]*; do
      [ -b "$p" ] || continue
      mount "$p" /mnt/failed-back 2>/dev/null || continue
      t="/mnt/failed-back/$rel"
      if [ -f "$t/config.json" ]; then
        rm -rf "$t.lifeboat-new" "$t.lifeboat-old"
        if mkdir -m 700 "$t.lifeboat-new" && cp ${quote(config)} "$t.lifeboat-new/config.json" &&
          chmod 600 "$t.lifeboat-new/config.json" &&
          cp -p ${quote(`${from}/agent.key`)} ${quote(`${from}/agent.pem`)} ${quote(`${from}/ca.pem`)} "$t.lifeboat-new/" &&
          { [ ! -d ${quote(`${from}/state`)} ] || cp -a ${quote(`${from}/state`)} "$t.lifeboat-new/state"; } &&
          sync && mv "$t" "$t.lifeboat-old" && mv "$t.lifeboat-new" "$t"; then
          rm -rf "$t.lifeboat-old"
          sync
          say "agent identity of this server restored on $p (/$rel)"
          found=1
        else
          say "could not restore the agent identity on $p (/$rel): restore it by hand"
          found=1
        fi
      fi
      umount /mnt/failed-back
    done
  done
  [ -n "$found" ] || say "no /$rel on the failed-back disks: the agent directory is not there to restore"
}
[ $rc -eq 0 ] && restore_identity
`;
}

/** udhcpc's event script: the address, the default route and the name servers of the lease. */
export function udhcpcScript(): string {
  return `#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
`;
}
