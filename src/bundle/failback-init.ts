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
 */

export interface FailbackInitOptions {
  then: "reboot" | "poweroff";
  /** The agent's executable and configuration directory in the image. */
  agent: string;
  configDir: string;
  /** The disk paths of the copied config.json, waited for before the agent starts. */
  disks: string[];
  serverName: string;
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
finish
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
