#!/usr/bin/env bash
# Make sure the local services payg needs are up, installing them if necessary:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth for local TCP)
#   Redis      on 127.0.0.1:6379
# Idempotent: when both already answer, it changes nothing.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=${PAYG_PG_PORT:-5432}        # ports overridable only to test this script
REDIS_HOST=127.0.0.1
REDIS_PORT=${PAYG_REDIS_PORT:-6379}
WAIT_SECONDS=30

die() { echo "services.sh: error: $*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* yourself"
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
  fi
}

# Can user postgres connect over TCP without a password?
pg_trusts() {
  command -v psql >/dev/null 2>&1 || return 1
  psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

pg_installed() {
  command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_lsclusters >/dev/null 2>&1 &&
    [ -n "$(find /usr/lib/postgresql -path '*/bin/postgres' 2>/dev/null | head -1)" ]
}

# Newest installed server version, e.g. "15".
pg_latest_version() {
  find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -1
}

# "VERSION CLUSTER" of the cluster configured for $PG_PORT; creates
# VERSION/main on that port when no cluster uses it yet.
pg_cluster() {
  local found v
  found=$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2 }' | sort -V | tail -1)
  if [ -z "$found" ]; then
    v=$(pg_latest_version)
    [ -n "$v" ] || die "PostgreSQL is installed but no server version found under /usr/lib/postgresql"
    [ -d "/etc/postgresql/$v/main" ] &&
      die "cluster $v/main exists but does not use port $PG_PORT; fix its port or free $PG_PORT"
    as_root pg_createcluster --port "$PG_PORT" "$v" main >/dev/null
    found="$v main"
  fi
  echo "$found"
}

# Put trust lines for local TCP at the top of pg_hba.conf (first match wins).
# Sets HBA_CHANGED=1 when it edited the file.
HBA_CHANGED=0
pg_trust_local_tcp() {
  local hba="/etc/postgresql/$1/$2/pg_hba.conf"
  [ -f "$hba" ] || die "no $hba"
  if ! as_root grep -q '^# payg: trust local TCP' "$hba"; then
    as_root sed -i '1i # payg: trust local TCP\nhost    all    all    127.0.0.1/32    trust\nhost    all    all    ::1/128         trust' "$hba"
    HBA_CHANGED=1
  fi
}

wait_for() { # name, check-function
  local name=$1 check=$2 i
  for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
    if "$check"; then return 0; fi
    sleep 0.5
  done
  die "$name did not answer on its port within ${WAIT_SECONDS}s"
}

ensure_postgres() {
  local v c action
  if pg_up; then
    if pg_trusts; then
      echo "postgres: already up on $PG_HOST:$PG_PORT"
    else
      echo "postgres: already up on $PG_HOST:$PG_PORT (warning: user postgres cannot connect over TCP without a password)"
    fi
    return 0
  fi
  if pg_installed; then
    action="started"
  else
    apt_install postgresql
    action="installed and started"
  fi
  read -r v c < <(pg_cluster)
  [ -n "${c:-}" ] || die "could not find or create a PostgreSQL cluster for port $PG_PORT"
  pg_trust_local_tcp "$v" "$c"
  if [ "$(pg_lsclusters -h | awk -v v="$v" -v c="$c" '$1 == v && $2 == c { print $4 }')" = online ]; then
    # e.g. the package's own start right after install, before pg_hba was edited
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" "$c" reload >/dev/null
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" "$c" start ||
      die "could not start PostgreSQL cluster $v/$c"
  fi
  wait_for PostgreSQL pg_up
  local note=""
  [ "$HBA_CHANGED" -eq 1 ] && note=" (set trust auth for local TCP)"
  echo "postgres: $action cluster $v/$c on $PG_HOST:$PG_PORT$note"
  pg_trusts || echo "postgres: warning: user postgres cannot connect over TCP without a password" >&2
}

# --------------------------------------------------------------------- Redis

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    local line=""
    {
      exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" &&
        printf 'PING\r\n' >&3 &&
        IFS= read -r -t 2 line <&3
    } 2>/dev/null || return 1
    exec 3>&- 2>/dev/null || true
    [[ $line == +PONG* ]]
  fi
}

redis_start() {
  local dir=/tmp logfile
  if [ -d /var/lib/redis ] && [ -w /var/lib/redis ]; then dir=/var/lib/redis; fi
  if [ -d /var/log/redis ] && [ -w /var/log/redis ]; then
    logfile=/var/log/redis/payg.log
  else
    logfile="$dir/payg-redis.log"
  fi
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir "$dir" --logfile "$logfile" >/dev/null ||
    die "redis-server failed to start (see $logfile)"
}

ensure_redis() {
  local action
  if redis_up; then
    echo "redis: already up on $REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  if command -v redis-server >/dev/null 2>&1; then
    action="started"
  else
    apt_install redis-server
    action="installed and started"
  fi
  # Installing the package may already have started its own service.
  redis_up || redis_start
  wait_for Redis redis_up
  echo "redis: $action on $REDIS_HOST:$REDIS_PORT"
}

ensure_postgres
ensure_redis
