#!/bin/sh
# Lifeboat agent installer. Needs only a POSIX shell, curl or wget, and openssl.
#
#   install.sh --endpoint URL --token-file F --ca-fingerprint SHA256 [options]
#   install.sh uninstall [--prefix DIR] [--force]
#
# Before anything from the bundle runs, the chain is checked offline:
#   the CA certificate's SHA-256 fingerprint equals the pinned one
#   -> the release certificate verifies against that CA (openssl verify)
#   -> the manifest's signature verifies with the release certificate's key
#   -> every file's size and SHA-256 match the manifest.
# A public key that only the bundle itself vouches for proves nothing: the
# fingerprint given on the command line is the only root of trust.
set -eu
umask 022

usage() {
	cat <<'EOF'
usage: install.sh --endpoint URL --token-file F --ca-fingerprint SHA256 [options]
       install.sh uninstall [--prefix DIR] [--force]

  --endpoint URL          the control plane, https://host:port
  --token-file F          file holding the install token (never give the token itself)
  --ca-fingerprint HEX    SHA-256 fingerprint of the Lifeboat CA certificate
  --from URL|FILE|DIR     where the bundle is (default URL/downloads/agent/): a URL
                          (control plane or S3), a tar archive, or a directory
  --proxy URL             HTTPS proxy for fetching and for the agent
  --devices LIST          block devices to replicate, comma-separated
  --disk-image PATH       an image file to replicate (repeatable)
  --no-prompt             do not ask which disks: take every non-removable disk
  --no-systemd            write the unit but start the agent directly (pid file)
  --dry-run               verify the bundle and run the doctor, change nothing
  --prefix DIR            where the agent goes (default /opt/lifeboat-agent)
  --config-dir DIR        the agent's configuration (default /etc/lifeboat/agent)
  --unit-dir DIR          where the systemd unit goes (default /etc/systemd/system)
  --runtime auto|sea|node the single executable or Node.js >= 20 (default auto)
  --force                 uninstall: remove even if the server cannot be told
EOF
}

die() {
	printf 'install.sh: error: %s\n' "$1" >&2
	if [ -n "${2:-}" ]; then printf 'hint: %s\n' "$2" >&2; fi
	exit 1
}
say() { printf '%s\n' "$*"; }

cmd=install
if [ "${1:-}" = uninstall ]; then
	cmd=uninstall
	shift
fi

endpoint=
token_file=
fingerprint=
from=
proxy=
devices=
disk_images=
prompt=1
use_systemd=1
dry_run=0
prefix=/opt/lifeboat-agent
config_dir=
unit_dir=
runtime=auto
force=0
NL='
'

while [ $# -gt 0 ]; do
	opt=$1
	case $opt in
	--endpoint | --token-file | --ca-fingerprint | --from | --proxy | --devices | --disk-image | --prefix | --config-dir | --unit-dir | --runtime)
		[ $# -ge 2 ] || die "$opt needs a value" "see install.sh --help"
		val=$2
		shift 2
		case $opt in
		--endpoint) endpoint=$val ;;
		--token-file) token_file=$val ;;
		--ca-fingerprint) fingerprint=$val ;;
		--from) from=$val ;;
		--proxy) proxy=$val ;;
		--devices) devices=$val ;;
		--disk-image) disk_images="$disk_images$val$NL" ;;
		--prefix) prefix=$val ;;
		--config-dir) config_dir=$val ;;
		--unit-dir) unit_dir=$val ;;
		--runtime) runtime=$val ;;
		esac
		;;
	--no-prompt) prompt=0 && shift ;;
	--no-systemd) use_systemd=0 && shift ;;
	--dry-run) dry_run=1 && shift ;;
	--force) force=1 && shift ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown option $opt" "see install.sh --help" ;;
	esac
done

case $prefix in
/*) prefix=${prefix%/} ;;
*) die "--prefix must be an absolute path, not $prefix" ;;
esac
[ -n "$prefix" ] || die "--prefix must not be /"
record="$prefix/.lifeboat-install"
# An earlier installation's record says where its unit and configuration went.
if [ -f "$record" ]; then
	[ -n "$config_dir" ] || config_dir=$(sed -n 's/^config //p' "$record")
	[ -n "$unit_dir" ] || unit_dir=$(sed -n 's/^unit-dir //p' "$record")
fi
[ -n "$config_dir" ] || config_dir=/etc/lifeboat/agent
[ -n "$unit_dir" ] || unit_dir=/etc/systemd/system
unit="$unit_dir/lifeboat-agent.service"
wrapper="$prefix/bin/lifeboat-agent"
pid_file="$prefix/agent.pid"

systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# ---------------------------------------------------------------- uninstall

stop_agent() {
	if systemd_running && [ -f "$unit" ]; then
		systemctl disable --now lifeboat-agent.service >/dev/null 2>&1 || true
	fi
	if [ -f "$pid_file" ]; then
		pid=$(cat "$pid_file")
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			i=0
			while kill -0 "$pid" 2>/dev/null && [ $i -lt 20 ]; do
				sleep 1
				i=$((i + 1))
			done
			kill -9 "$pid" 2>/dev/null || true
			say "stopped the agent (pid $pid)"
		fi
		rm -f "$pid_file"
	fi
}

uninstall() {
	[ -f "$record" ] || [ -f "$prefix/manifest" ] || die "no Lifeboat agent installation at $prefix" "give the --prefix it was installed with"
	stop_agent
	if [ -f "$config_dir/config.json" ] && [ -x "$wrapper" ]; then
		if [ $force = 1 ]; then
			"$wrapper" agent uninstall --config-dir "$config_dir" --force
		else
			"$wrapper" agent uninstall --config-dir "$config_dir" ||
				die "the server was not told; nothing more was removed" "fix the connection, or run install.sh uninstall --force"
		fi
	fi
	rmdir "$config_dir" 2>/dev/null || true
	if [ -f "$unit" ]; then
		rm -f "$unit"
		if systemd_running; then systemctl daemon-reload || true; fi
		say "removed $unit"
	fi
	rmdir "$unit_dir" 2>/dev/null || true
	# Only what the installation put there: the manifest's files and our own.
	if [ -f "$prefix/manifest" ]; then
		sed -n 's/^file [0-9a-f]* [0-9]* \([A-Za-z0-9][A-Za-z0-9._-]*\)$/\1/p' "$prefix/manifest" | while read -r n; do
			rm -f "$prefix/$n"
		done
	fi
	rm -f "$prefix/manifest" "$prefix/manifest.sig" "$wrapper" "$prefix/agent.log" "$record"
	rmdir "$prefix/bin" 2>/dev/null || true
	rmdir "$prefix" 2>/dev/null || say "warning: $prefix holds files Lifeboat did not put there; left in place"
	say "removed $prefix"
}

if [ $cmd = uninstall ]; then
	uninstall
	exit 0
fi

# ---------------------------------------------------------------- install

[ -n "$endpoint" ] || die "missing --endpoint" "give the control plane's https://host:port"
[ -n "$fingerprint" ] || die "missing --ca-fingerprint" "give the SHA-256 fingerprint of the Lifeboat CA (server: openssl x509 -in D/ca.pem -noout -fingerprint -sha256)"
[ -n "$token_file" ] || die "missing --token-file" "make a token on the server (lifeboat token create) and carry it in a file"
[ -r "$token_file" ] || die "cannot read the token file $token_file"
case $runtime in auto | sea | node) ;; *) die "--runtime is auto, sea or node, not $runtime" ;; esac
command -v openssl >/dev/null 2>&1 || die "openssl is not installed" "install openssl: the bundle's signature is checked with it"
endpoint=${endpoint%/}
if [ $dry_run = 0 ] && [ $use_systemd = 1 ] && ! systemd_running; then
	die "systemd is not running on this host" "run with --no-systemd to start the agent directly"
fi

if [ -n "$proxy" ]; then
	https_proxy=$proxy
	HTTPS_PROXY=$proxy
	http_proxy=$proxy
	export https_proxy HTTPS_PROXY http_proxy
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM
mkdir "$work/b"
b="$work/b"

# fetch URL DEST [insecure|CAFILE]
fetch() {
	if command -v curl >/dev/null 2>&1; then
		case ${3:-} in
		insecure) curl -fsSL --retry 2 -k -o "$2" "$1" ;;
		'') curl -fsSL --retry 2 -o "$2" "$1" ;;
		*) curl -fsSL --retry 2 --cacert "$3" -o "$2" "$1" ;;
		esac
	elif command -v wget >/dev/null 2>&1; then
		case ${3:-} in
		insecure) wget -q --no-check-certificate -O "$2" "$1" ;;
		'') wget -q -O "$2" "$1" ;;
		*) wget -q --ca-certificate="$3" -O "$2" "$1" ;;
		esac
	else
		die "neither curl nor wget is installed" "install one, or carry the bundle in with --from DIR"
	fi
}

# Where the bundle comes from: a URL, or a local directory (an archive is unpacked into one).
[ -n "$from" ] || from="$endpoint/downloads/agent/"
src_dir=
src_url=
case $from in
http://* | https://*) src_url="${from%/}/" ;;
*)
	if [ -d "$from" ]; then
		src_dir=$from
	elif [ -f "$from" ]; then
		mkdir "$work/unpack"
		if gzip -t "$from" 2>/dev/null; then
			gzip -dc "$from" | (cd "$work/unpack" && tar xf -) || die "cannot unpack $from"
		else
			(cd "$work/unpack" && tar xf -) <"$from" || die "cannot unpack $from" "give a tar archive of the bundle directory"
		fi
		src_dir="$work/unpack"
		[ -f "$src_dir/manifest" ] || src_dir=$(dirname "$(find "$work/unpack" -name manifest -type f | head -n 1)")
	else
		die "--from $from is neither a URL, a file nor a directory"
	fi
	;;
esac
# Files from the control plane are fetched over TLS checked against the pinned CA
# once ca.pem matched its fingerprint; elsewhere (S3) with the system's CAs.
tls=
get() { # NAME [insecure]
	if [ -n "$src_url" ]; then
		fetch "$src_url$1" "$b/$1" "${2:-$tls}" || return 1
	else
		[ -f "$src_dir/$1" ] || return 1
		cp "$src_dir/$1" "$b/$1"
	fi
}

say "== verifying the bundle from $from"
get ca.pem insecure || die "cannot get the bundle's ca.pem from $from" "check --from and the network (or carry the bundle in with --from DIR)"
# 1. The CA: only its first certificate counts (more in the file could be trusted by openssl verify).
openssl x509 -in "$b/ca.pem" -out "$work/ca.pem" 2>/dev/null || die "the bundle's ca.pem is not a certificate; nothing was installed"
got=$(openssl x509 -in "$work/ca.pem" -noout -fingerprint -sha256 | sed 's/^[^=]*=//' | tr -d ': ' | tr 'abcdef' 'ABCDEF')
want=$(printf '%s' "$fingerprint" | sed 's/^[Ss][Hh][Aa]256[:=]//' | tr -d ': ' | tr 'abcdef' 'ABCDEF')
if [ "$got" != "$want" ]; then
	die "the bundle's CA certificate has SHA-256 fingerprint $got, not the pinned $want; nothing was installed" \
		"check --ca-fingerprint against the server's D/ca.pem; a different CA means a different (or forged) site"
fi
if [ -n "$src_url" ] && [ "${src_url#"$endpoint"/}" != "$src_url" ]; then tls="$work/ca.pem"; fi
say "ok   CA certificate matches the pinned fingerprint"

get release.pem || die "cannot get the bundle's release.pem from $from"
get manifest || die "cannot get the bundle's manifest from $from"
if ! get manifest.sig || [ ! -s "$b/manifest.sig" ]; then
	die "the bundle has no signature (manifest.sig): an unsigned bundle is refused; nothing was installed" "rebuild it on the server with lifeboat bundle build"
fi


# 2. The release certificate, issued by that CA, for code signing.
openssl x509 -in "$b/release.pem" -out "$work/release.pem" 2>/dev/null || die "the bundle's release.pem is not a certificate; nothing was installed"
verified=$(openssl verify -CAfile "$work/ca.pem" "$work/release.pem" 2>&1 || true)
case $verified in
*error* | *Error*) verified= ;;
esac
case $verified in
*": OK") ;;
*) die "the release certificate was not issued by the pinned CA; nothing was installed" "the bundle was not built by this site: rebuild it there" ;;
esac
openssl x509 -in "$work/release.pem" -noout -text | grep -q "Code Signing" ||
	die "the release certificate is not a code-signing certificate; nothing was installed"
say "ok   release certificate issued by the CA"

# 3. The manifest's signature.
openssl x509 -in "$work/release.pem" -noout -pubkey >"$work/release-pub.pem"
if ! openssl dgst -sha256 -verify "$work/release-pub.pem" -signature "$b/manifest.sig" "$b/manifest" >/dev/null 2>&1; then
	die "the manifest's signature does not verify with the release certificate: the bundle was changed; nothing was installed" \
		"fetch the bundle again from the server; rebuild it there with lifeboat bundle build"
fi
say "ok   manifest signed by the release key"

# 4. Every file's size and hash. The manifest is trusted from here on.
sed -n 1p "$b/manifest" | grep -qx 'lifeboat-agent-bundle 1' || die "unknown manifest format; nothing was installed" "use install.sh from the same bundle"
version=$(sed -n 's/^version //p' "$b/manifest")
names=
sed -n '3,$p' "$b/manifest" >"$work/files"
while read -r kw hash size name; do
	[ "$kw" = file ] || die "bad manifest line: $kw $hash $size $name"
	case $name in '' | .* | */* | *[!A-Za-z0-9._-]*) die "bad file name in the manifest: $name" ;; esac
	case $hash in *[!0-9a-f]*) die "bad hash in the manifest for $name" ;; esac
	case $size in '' | *[!0-9]*) die "bad size in the manifest for $name" ;; esac
	if [ ! -f "$b/$name" ]; then
		get "$name" || die "cannot get the bundle's file $name from $from; nothing was installed"
	fi
	have=$(wc -c <"$b/$name" | tr -d ' ')
	sum=$(openssl dgst -sha256 <"$b/$name" | sed 's/^.*= *//')
	if [ "$have" != "$size" ] || [ "$sum" != "$hash" ]; then
		die "the bundle's file $name does not match its manifest (size $have, sha256 $sum): refused; nothing was installed" \
			"fetch the bundle again; if it persists, the copy was tampered with"
	fi
	names="$names $name"
done <"$work/files"
say "ok   $(wc -l <"$work/files" | tr -d ' ') files match the manifest (bundle $version)"

# The agent: the single executable when it runs here, else Node.js >= 20.
node=
kind=
if [ $runtime != node ] && [ -f "$b/lifeboat-agent" ]; then
	chmod 755 "$b/lifeboat-agent"
	if "$b/lifeboat-agent" --version >/dev/null 2>&1; then kind=sea; fi
fi
if [ -z "$kind" ] && [ $runtime != sea ] && [ -f "$b/lifeboat-agent.cjs" ]; then
	node=$(command -v node 2>/dev/null || true)
	if [ -n "$node" ]; then
		major=$("$node" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
		if [ "$major" -ge 20 ] 2>/dev/null; then kind=node; fi
	fi
fi
[ -n "$kind" ] || die "neither the single executable nor Node.js >= 20 can run the agent on this host" \
	"the executable needs linux-x64 with glibc >= 2.28 and a TMPDIR not mounted noexec; else install Node.js 20 or later"
agent() {
	if [ $kind = sea ]; then "$b/lifeboat-agent" "$@"; else "$node" "$b/lifeboat-agent.cjs" "$@"; fi
}
say "ok   agent runs here ($([ $kind = sea ] && echo 'single executable' || echo "Node.js at $node"))"

# The connectivity doctor, when this agent has one.
if agent --help 2>/dev/null | grep -q '^ *doctor'; then
	say "== connectivity check"
	set -- doctor --endpoint "$endpoint" --ca-file "$work/ca.pem" --token-file "$token_file" --config-dir "$config_dir"
	if [ -n "$proxy" ]; then set -- "$@" --proxy "$proxy"; fi
	agent "$@" || die "the connectivity check failed (report above); nothing was installed" "fix what it names, then run install.sh again"
else
	say "skip connectivity check: this agent has no doctor command"
fi

if [ $dry_run = 1 ]; then
	say "dry run: the bundle verified; nothing was changed"
	exit 0
fi

# ---------------------------------------------------------------- changes from here on

say "== installing to $prefix"
mkdir -p "$prefix/bin"
printf 'config %s\nunit-dir %s\n' "$config_dir" "$unit_dir" >"$record"
for n in $names manifest manifest.sig; do
	cp "$b/$n" "$prefix/.$n.new"
	mv -f "$prefix/.$n.new" "$prefix/$n"
done
[ ! -f "$prefix/lifeboat-agent" ] || chmod 755 "$prefix/lifeboat-agent"
chmod 755 "$prefix/install.sh"
# The wrapper asks glibc to back its heaps with transparent huge pages (where
# THP is "madvise", as on Debian and Ubuntu; "always" does so anyway, and a
# glibc older than 2.35 ignores the tunable). A page fault per 4 KiB of new
# memory costs the agent's block buffers dearly on virtual machines: on the
# benchmark VM the agent's initial sync took 11-22% less CPU with it. And it
# gives every allocation of a MiB or more a mapping of its own, returned when
# it is freed, instead of glibc's heaps that keep it: the agent's peak RSS in
# the replication benchmark fell by about a sixth (docs/operations.md,
# "Running the control plane as a service").
{
	printf '#!/bin/sh\nGLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576}"\nexport GLIBC_TUNABLES\n'
	if [ $kind = sea ]; then
		printf 'exec "%s/lifeboat-agent" "$@"\n' "$prefix"
	else
		printf 'exec "%s" "%s/lifeboat-agent.cjs" "$@"\n' "$node" "$prefix"
	fi
} >"$wrapper.new"
chmod 755 "$wrapper.new"
mv -f "$wrapper.new" "$wrapper"

# The unit. The agent reads block devices (O_DIRECT), writes tracefs under
# /sys/kernel/tracing and freezes filesystems (FIFREEZE, CAP_SYS_ADMIN), so
# PrivateDevices, ProtectKernelTunables (read-only /sys) and a dropped
# CAP_SYS_ADMIN would break it. MemoryDenyWriteExecute is left off: V8's JIT
# needs memory that is writable and executable.
mkdir -p "$unit_dir"
{
	printf '[Unit]\nDescription=Lifeboat agent: replicates this server'"'"'s disks to the recovery site\n'
	printf 'Wants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=simple\n'
	printf 'ExecStart=%s agent run --config-dir %s\n' "$wrapper" "$config_dir"
	printf 'Restart=on-failure\nRestartSec=5\nEnvironment=UV_THREADPOOL_SIZE=16\n'
	if [ -n "$proxy" ]; then printf 'Environment=HTTPS_PROXY=%s\n' "$proxy"; fi
	printf 'ReadWritePaths=%s\n' "$config_dir"
	cat <<'EOF'
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=default
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
LockPersonality=yes
RemoveIPC=yes
UMask=0077
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@swap @reboot @module @obsolete @cpu-emulation @debug @raw-io
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
EOF
} >"$unit.new"
mv -f "$unit.new" "$unit"
say "wrote $unit"

if [ -f "$config_dir/config.json" ]; then
	say "already registered ($config_dir/config.json): registration skipped"
else
	say "== registering with $endpoint"
	set -- agent install --endpoint "$endpoint" --ca-file "$prefix/ca.pem" --token-file "$token_file" --config-dir "$config_dir"
	if [ -n "$devices" ]; then set -- "$@" --devices "$devices"; fi
	if [ $prompt = 0 ]; then set -- "$@" --no-prompt; fi
	old_ifs=$IFS
	IFS=$NL
	for img in $disk_images; do set -- "$@" --disk-image "$img"; done
	IFS=$old_ifs
	"$wrapper" "$@" || die "registration failed (above); the files are in $prefix" "fix it and run install.sh again, or install.sh uninstall"
fi

say "== starting the agent"
if [ $use_systemd = 1 ]; then
	systemctl daemon-reload
	systemctl enable lifeboat-agent.service >/dev/null
	systemctl restart lifeboat-agent.service
	say "started lifeboat-agent.service (systemctl status lifeboat-agent)"
else
	stop_agent
	nohup "$wrapper" agent run --config-dir "$config_dir" >>"$prefix/agent.log" 2>&1 </dev/null &
	echo $! >"$pid_file"
	sleep 1
	kill -0 "$(cat "$pid_file")" 2>/dev/null || die "the agent stopped at once; see $prefix/agent.log"
	say "started the agent (pid $(cat "$pid_file"), log $prefix/agent.log)"
fi
say "installed Lifeboat agent $version in $prefix"
