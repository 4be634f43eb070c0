#!/usr/bin/env bash
# PostgreSQL for the database tests, on a Debian 12 machine, as root.
#
#   eval "$(bash .ci/postgres.sh | grep '^LIFEBOAT_TEST_PG_URL=')"; export LIFEBOAT_TEST_PG_URL
#   . .ci/postgres.sh          # the same, exporting LIFEBOAT_TEST_PG_URL into this shell
#
# Installs Debian's postgresql if it is missing (assumes `apt-get update` ran),
# creates and starts the newest installed version's `main` cluster if it is
# not running, makes `lifeboat_test` a superuser that logs in with a password
# over TCP on 127.0.0.1, and prints one line on stdout:
#   LIFEBOAT_TEST_PG_URL=postgres://lifeboat_test:<password>@127.0.0.1:<port>/postgres
# Everything else goes to stderr. The password is random, made once and kept
# in /var/lib/postgresql/lifeboat_test.password (root, 0600), so running this
# again prints the same URL. The tests create and drop their own databases.

lifeboat_pg_main() {
  set -euo pipefail
  export DEBIAN_FRONTEND=noninteractive
  local ver port status hba pw
  local pwfile=/var/lib/postgresql/lifeboat_test.password
  local hba_line="host all lifeboat_test 127.0.0.1/32 scram-sha-256"
  log() { printf 'postgres.sh: %s\n' "$*" >&2; }

  if [ "$(id -u)" != 0 ]; then
    log "run me as root"
    return 1
  fi
  if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    log "installing postgresql from Debian's packages"
    apt-get install -y -qq postgresql >&2
  fi
  ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | grep -E '^[0-9]+$' | sort -n | tail -1)
  cluster() { pg_lsclusters -h | awk -v v="$ver" -v f="$1" '$1 == v && $2 == "main" { print $f }'; }
  if [ -z "$(cluster 2)" ]; then
    log "creating cluster $ver/main"
    pg_createcluster "$ver" main >&2
  fi
  status=$(cluster 4)
  if [ "$status" != online ]; then
    log "starting cluster $ver/main (was ${status:-unknown})"
    pg_ctlcluster "$ver" main start >&2
  fi
  port=$(cluster 3)
  for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -p "$port" && break
    sleep 1
  done
  runuser -u postgres -- pg_isready -q -p "$port" || {
    log "cluster $ver/main on port $port does not answer; see /var/log/postgresql/postgresql-$ver-main.log"
    return 1
  }

  if [ ! -s "$pwfile" ]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile")
  fi
  chmod 600 "$pwfile"
  pw=$(cat "$pwfile")

  # The password goes on stdin, not the command line (where ps would show it).
  runuser -u postgres -- psql -p "$port" -d postgres -q -v ON_ERROR_STOP=1 >&2 <<SQL
\\set pw '$pw'
SELECT 'CREATE ROLE lifeboat_test' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lifeboat_test') \\gexec
ALTER ROLE lifeboat_test WITH LOGIN SUPERUSER PASSWORD :'pw';
SQL

  # Debian's pg_hba.conf already allows passwords from 127.0.0.1; make sure of it for this user.
  hba=$(runuser -u postgres -- psql -p "$port" -d postgres -Atc 'SHOW hba_file')
  if ! grep -qxF "$hba_line" "$hba"; then
    log "allowing lifeboat_test from 127.0.0.1 in $hba"
    sed -i "1i $hba_line" "$hba"
    pg_ctlcluster "$ver" main reload >&2
  fi

  PGPASSWORD="$pw" psql -h 127.0.0.1 -p "$port" -U lifeboat_test -d postgres -Atqc 'SELECT 1' >/dev/null || {
    log "lifeboat_test cannot log in over 127.0.0.1:$port"
    return 1
  }
  log "PostgreSQL $ver ready on 127.0.0.1:$port"
  printf 'LIFEBOAT_TEST_PG_URL=postgres://lifeboat_test:%s@127.0.0.1:%s/postgres\n' "$pw" "$port"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: run in a subshell so set -e and the helpers stay out of the caller's shell.
  if _lifeboat_pg_line=$( (lifeboat_pg_main) ); then
    export "${_lifeboat_pg_line?}"
    printf '%s\n' "$_lifeboat_pg_line"
    unset _lifeboat_pg_line
    unset -f lifeboat_pg_main
  else
    unset _lifeboat_pg_line
    unset -f lifeboat_pg_main
    return 1
  fi
else
  lifeboat_pg_main
fi
