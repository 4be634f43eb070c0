#!/usr/bin/env bash
# A throw-away single-node Ceph cluster with a RADOS Gateway on loopback, for
# the S3 integration tests (docs/scale-out.md, "Integration against Ceph RGW").
#
#   scripts/integration/ceph-rgw.sh [COMMAND [ARGS...]]
#
# Installs Debian's Ceph packages when missing, then makes one monitor, one
# manager, one OSD (BlueStore on a sparse file, or memstore with
# LIFEBOAT_CEPH_OBJECTSTORE=memstore) and one radosgw (beast on 127.0.0.1),
# all under a temporary directory with its own fsid, keyrings and ceph.conf:
# nothing is read from or written to /etc/ceph or /var/lib/ceph. It creates an
# S3 user and a bucket and writes a 0600 env file:
#   LIFEBOAT_TEST_S3_URL                 the gateway's endpoint, http://127.0.0.1:PORT
#   LIFEBOAT_TEST_S3_ACCESS_KEY_ID       the user's keys (never on a command line or in a log)
#   LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY
#   LIFEBOAT_TEST_S3_BUCKET              the bucket made here (the tests make their own too)
# COMMAND runs with that file's variables in its environment (default: the
# integration tests); its exit status is the script's. With COMMAND "shell"
# the cluster stays up until the shell exits. Every daemon is stopped and the
# directory removed on exit, also after a failure or Ctrl-C (set
# LIFEBOAT_CEPH_KEEP=1 to keep the directory, logs included, for a post-mortem).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

say() { printf '[ceph-rgw %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(now)

# --- packages -------------------------------------------------------------
# uuid-runtime, jq and curl: uuidgen for the fsid, jq for JSON output, curl to probe the gateway.
packages=(ceph-mon ceph-mgr ceph-osd radosgw ceph-common uuid-runtime jq curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
install_s=0.0
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    say "missing packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})"
    exit 2
  fi
  say "installing ${missing[*]}"
  ti=$(now)
  # No recommends: the manager's dashboard and its Python stack are not needed here.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  install_s=$(since "$ti")
  say "packages installed in ${install_s} s"
fi
say "$(ceph --version)"

# --- the cluster's directory and configuration ------------------------------
umask 077
dir=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-ceph.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((rc != 0)) && [[ -d $dir/log ]]; then
    for f in "$dir"/log/*.log; do
      [[ -s $f ]] || continue
      say "last lines of $(basename "$f"):"
      tail -n 15 "$f" >&2 || true
    done
  fi
  if [[ ${LIFEBOAT_CEPH_KEEP:-} == 1 ]]; then
    say "kept $dir (remove it when done)"
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
mon_v2=$(free_port)
mon_v1=$(free_port)
rgw_port=$(free_port)
fsid=$(uuidgen)
objectstore=${LIFEBOAT_CEPH_OBJECTSTORE:-bluestore}
mkdir -p "$dir"/{run,log,crash,mon.a,mgr.x,osd.0,rgw.a}
conf=$dir/ceph.conf

if [[ $objectstore == bluestore ]]; then
  # A sparse file as the one block device (no LVM, no device-mapper); data,
  # RocksDB and WAL share it. Small fixed caches instead of the memory autotuner.
  store_conf="osd objectstore = bluestore
bluestore block create = true
bluestore block size = 8589934592
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
bluestore fsck on mount = false
bluestore fsck on umount = false
bluestore cache autotune = false
bluestore cache size = 134217728
bluestore rocksdb options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,write_buffer_size=16777216"
elif [[ $objectstore == memstore ]]; then
  store_conf="osd objectstore = memstore
memstore device bytes = 4294967296"
else
  say "LIFEBOAT_CEPH_OBJECTSTORE must be bluestore or memstore, not $objectstore"
  exit 2
fi

cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/\$name.keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = false
crash dir = $dir/crash
# One OSD: pools of one replica, few placement groups, no warnings about either.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
mon warn on insecure global id reclaim allowed = false

[mon]
mon data = $dir/mon.\$id
mon cluster log file = $dir/log/cluster.log

[mgr]
mgr data = $dir/mgr.\$id
mgr initial modules =

[osd]
osd data = $dir/osd.\$id
$store_conf
osd memory target = 536870912
osd op num shards = 2
osd op num threads per shard = 1
osd max object size = 134217728

[client.rgw.a]
rgw data = $dir/rgw.a
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw thread pool size = 32
EOF

ceph_() { ceph -c "$conf" --connect-timeout 20 "$@"; }

# --- monitor ----------------------------------------------------------------
tc=$(now)
say "cluster $fsid in $dir ($objectstore), monitor on 127.0.0.1:$mon_v2"
ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]" \
  "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
ceph-mon -c "$conf" -i a -f &
pids+=($!)
# The first contact waits for the monitor to form its quorum of one.
ceph -c "$conf" --connect-timeout 90 mon stat >/dev/null

# --- manager ----------------------------------------------------------------
ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
  -o "$dir/mgr.x.keyring" >/dev/null
ceph-mgr -c "$conf" -i x -f &
pids+=($!)

# --- OSD --------------------------------------------------------------------
osd_uuid=$(uuidgen)
osd_id=$(ceph_ osd new "$osd_uuid")
[[ $osd_id == 0 ]] || { say "expected OSD id 0, got $osd_id"; exit 1; }
ceph_ auth get-or-create osd.0 mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
  -o "$dir/osd.0.keyring" >/dev/null
ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>"$dir/log/osd.0.mkfs.err" || {
  cat "$dir/log/osd.0.mkfs.err" >&2
  exit 1
}
ceph-osd -c "$conf" -i 0 -f &
pids+=($!)
for i in $(seq 120); do
  up=$(ceph_ osd stat -f json 2>/dev/null | jq -r '.num_up_osds' 2>/dev/null || true)
  [[ $up == 1 ]] && break
  ((i == 120)) && { say "the OSD did not come up in 60 s"; exit 1; }
  sleep 0.5
done
say "monitor, manager and OSD up in $(since "$tc") s"

# --- gateway ----------------------------------------------------------------
ceph_ auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
  -o "$dir/client.rgw.a.keyring" >/dev/null
radosgw -c "$conf" -n client.rgw.a -f &
pids+=($!)
endpoint=http://127.0.0.1:$rgw_port
for i in $(seq 240); do
  curl -fsS -o /dev/null "$endpoint/" 2>/dev/null && break
  kill -0 "${pids[-1]}" 2>/dev/null || { say "radosgw exited"; exit 1; }
  ((i == 240)) && { say "radosgw did not answer in 120 s"; exit 1; }
  sleep 0.5
done
say "radosgw answers at $endpoint"

# The user's keys go from radosgw-admin's output to 0600 files, never to a
# command line or the terminal.
radosgw-admin -c "$conf" user create --uid=lifeboat --display-name="Lifeboat integration" \
  >"$dir/user.json"
env_file=$dir/s3.env
jq -r --arg e "$endpoint" --arg b "lifeboat-integration" '
  "LIFEBOAT_TEST_S3_URL=\($e)",
  "LIFEBOAT_TEST_S3_BUCKET=\($b)",
  "LIFEBOAT_TEST_S3_ACCESS_KEY_ID=\(.keys[0].access_key)",
  "LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY=\(.keys[0].secret_key)"' "$dir/user.json" >"$env_file"
rm -f "$dir/user.json"
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
export LIFEBOAT_TEST_S3_ENV_FILE=$env_file
export CEPH_CONF=$conf

# The bucket, and a first object through it: the gateway works end to end.
node --input-type=module -e '
  import { S3Client, CreateBucketCommand, PutObjectCommand, GetObjectCommand } from "@aws-sdk/client-s3";
  const env = process.env;
  const s3 = new S3Client({
    endpoint: env.LIFEBOAT_TEST_S3_URL, region: "us-east-1", forcePathStyle: true,
    requestChecksumCalculation: "WHEN_REQUIRED", responseChecksumValidation: "WHEN_REQUIRED",
    credentials: { accessKeyId: env.LIFEBOAT_TEST_S3_ACCESS_KEY_ID, secretAccessKey: env.LIFEBOAT_TEST_S3_SECRET_ACCESS_KEY },
  });
  const Bucket = env.LIFEBOAT_TEST_S3_BUCKET;
  await s3.send(new CreateBucketCommand({ Bucket }));
  await s3.send(new PutObjectCommand({ Bucket, Key: "hello", Body: "lifeboat" }));
  const got = await (await s3.send(new GetObjectCommand({ Bucket, Key: "hello" }))).Body.transformToString();
  if (got !== "lifeboat") throw new Error(`read back ${JSON.stringify(got)}`);
  s3.destroy();
'
cluster_s=$(since "$tc")
say "cluster ready in ${cluster_s} s: bucket $LIFEBOAT_TEST_S3_BUCKET at $endpoint; env file $env_file"

# --- the command --------------------------------------------------------------
if (($# == 0)); then
  set -- node --enable-source-maps --test --test-concurrency=1 --test-force-exit --test-timeout=600000 \
    dist/test/integration/*.test.js dist/test/store/s3-repository.test.js
fi
if [[ $1 == shell ]]; then
  say "the cluster stays up until this shell exits (ceph -c $conf status)"
  set -- "${SHELL:-bash}"
fi
tt=$(now)
umask 022
set +e
if [[ $1 == "${SHELL:-bash}" ]]; then
  "$@"
  rc=$?
else
  # In the background so that a TERM to this script stops it at once (a
  # foreground child would delay the trap until it ends).
  "$@" &
  pids+=($!)
  wait "${pids[-1]}"
  rc=$?
fi
set -e
say "timings: packages ${install_s} s, cluster ${cluster_s} s, command $(since "$tt") s, total $(since "$t0") s; exit $rc"
exit "$rc"
