#!/usr/bin/env bash
# payg under faults (a fault-injection run, not a test).
#
#   bench/faults.sh                  # METER_MODES="batched durable"
#   METER_MODES=batched bench/faults.sh
#
# WARNING: it restarts the local PostgreSQL cluster (pg_ctlcluster) once per
# meter mode: run it on a machine where nothing else uses that server.
# Redis is a private redis-server on its own port, restarted freely.
#
# Two payg instances (A and B) share one fresh database and the private
# Redis; each gets its own half of the users and its own load generator
# (bench/loadgen.rs, JWT, closed loop), so each instance's 2xx can be
# compared with the counts of its own users. Phases, each under load:
#   1. terminate   payg's PostgreSQL backends are terminated, three times
#   2. pg-restart  the PostgreSQL cluster is restarted (pg_ctlcluster, fast)
#   3. outage      the database refuses connections for OUTAGE_SECS
#                  (ALLOW_CONNECTIONS false, its backends terminated)
#   4. redis       Redis is killed and started again, empty
#   5. sigkill     instance B is killed with SIGKILL mid-load
# Then A is stopped with SIGTERM (it drains its meter) and the counts are
# compared with the 2xx the clients saw. Prints, per phase, the 2xx and every
# refusal by status; at the end, per instance, lost and doubled calls.
#
# Targets: 0 doubled anywhere; 0 lost on A; on B (SIGKILL) batched may lose
# at most its unflushed window (printed), durable 0; no 500 at all; in
# batched mode no refusal during the outage (every user was seen within the
# last minute). Exits non-zero when a target that must hold does not.
#
# Optional environment:
#   METER_MODES="batched durable"   PAYG_METER_MODE of each run
#   USERS=200           users per instance
#   CONNECTIONS=64      load generator connections per instance (bench/common.sh)
#   OUTAGE_SECS=10      how long the database refuses connections
#   PORT_A=18095 PORT_B=18096 REDIS_FAULT_PORT=18097
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SERVER_PID=""
CREATED_DBS=()
# shellcheck source=bench/common.sh
. bench/common.sh

read -r -a METER_MODES <<<"${METER_MODES:-batched durable}"
USERS=${USERS:-200}

OUTAGE_SECS=${OUTAGE_SECS:-10}
PORT_A=${PORT_A:-18095}
PORT_B=${PORT_B:-18096}
REDIS_FAULT_PORT=${REDIS_FAULT_PORT:-18097}
FLUSH_MS=200

WORK=$(mktemp -d "${TMPDIR:-/tmp}/payg-faults.XXXXXX")
PID_A="" PID_B="" REDIS_PID="" LOADGEN_PIDS=()
FAILED=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for p in ${LOADGEN_PIDS[@]+"${LOADGEN_PIDS[@]}"} $PID_A $PID_B $REDIS_PID; do
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  for db in ${CREATED_DBS[@]+"${CREATED_DBS[@]}"}; do
    psql_on postgres -c "ALTER DATABASE \"$db\" ALLOW_CONNECTIONS true" >/dev/null 2>&1
  done
  drop_created_databases
  if [ "$rc" -ne 0 ]; then
    echo "faults: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_bench_binaries
JWT_SECRET_FAULTS=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

start_redis() { start_private_redis "$REDIS_FAULT_PORT" "$WORK/redis.log"; }

PG_CLUSTER=$(pg_lsclusters --no-header 2>/dev/null | awk '$3 == 5432 { print $1 " " $2; exit }' || true)
restart_postgres() {
  if [ -z "$PG_CLUSTER" ]; then
    log "no Debian PostgreSQL cluster on port 5432: pg-restart phase skipped"
    return 0
  fi
  # shellcheck disable=SC2086
  pg_ctlcluster --skip-systemctl-redirect $PG_CLUSTER restart -m fast
}

STARTED_PID=""
start_instance() { # port, database, meter mode → STARTED_PID (a child of this shell)
  (cd "$WORK" && exec env DATABASE_URL="$PG_URL/$2" JWT_SECRET="$JWT_SECRET_FAULTS" RUST_LOG=warn \
    PAYG_BIND="127.0.0.1:$1" PAYG_METRICS_BIND=127.0.0.1:0 PAYG_WORKERS=2 \
    PAYG_METER_MODE="$3" PAYG_METER_FLUSH_MS="$FLUSH_MS" PAYG_RATE_LIMIT_PER_MINUTE=0 \
    REDIS_URL="redis://127.0.0.1:$REDIS_FAULT_PORT" PAYG_REDIS_PREFIX="payg-faults:" \
    "$PAYG" serve --no-migrate) >>"$WORK/server-$1.log" 2>&1 &
  STARTED_PID=$!
}

wait_healthy() { # port
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  die "the instance on $1 did not answer /healthz"
}

json_field() { sed -E "s/.*\"$2\":([0-9]+).*/\\1/" <<<"$1"; }
statuses_of() { sed -E 's/.*"non_2xx_by_status":(\{[^}]*\}).*/\1/' <<<"$1"; }

# Runs the load on both instances (B while alive) for $1 s, calling the
# fault function $3 after $2 s; prints the phase's line.
phase() { # seconds, fault after, fault function, name
  local secs=$1 at=$2 fault=$3 name=$4 dir="$WORK/$MODE/$4" inst
  mkdir -p "$dir"
  LOADGEN_PIDS=()
  for inst in a b; do
    local port=$PORT_A
    [ "$inst" = b ] && port=$PORT_B
    if [ "$inst" = b ] && ! kill -0 "$PID_B" 2>/dev/null; then continue; fi
    JWT_SECRET="$JWT_SECRET_FAULTS" "$LOADGEN" --url "http://127.0.0.1:$port" \
      --connections "$CONNECTIONS" --duration-secs "$secs" --warmup-secs 0 --threads 1 \
      --users-file "$WORK/$MODE/users-$inst.txt" --tally-file "$dir/tally-$inst.json" \
      >"$dir/loadgen-$inst.json" &
    LOADGEN_PIDS+=($!)
  done
  sleep "$at"
  log "$MODE/$name: $fault"
  "$fault"
  wait "${LOADGEN_PIDS[@]}" || die "$MODE/$name: a load generator failed"
  LOADGEN_PIDS=()
  local line="" out
  for inst in a b; do
    [ -f "$dir/loadgen-$inst.json" ] || continue
    out=$(cat "$dir/loadgen-$inst.json")
    line="$line $inst: 2xx $(json_field "$out" ok), refused $(statuses_of "$out"), errors $(json_field "$out" errors);"
    if [[ $(statuses_of "$out") == *'"500"'* ]]; then
      FAILED=1
      line="$line (500s!)"
    fi
    if [ "$MODE" = batched ] && [ "$name" = outage ] && [ "$(json_field "$out" non_2xx)" -ne 0 ]; then
      FAILED=1
      line="$line (refusals during the outage!)"
    fi
  done
  printf '| %s | %s |%s |\n' "$MODE" "$name" "$line" >>"$WORK/phases.md"
}

fault_terminate() {
  local i
  for i in 1 2 3; do
    psql_on postgres -tAc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
      WHERE datname = '$DB' AND application_name = 'payg'" >/dev/null
    sleep 0.3
  done
}
fault_pg_restart() { restart_postgres >/dev/null; }
fault_outage() {
  psql_on postgres -c "ALTER DATABASE \"$DB\" ALLOW_CONNECTIONS false" >/dev/null
  psql_on postgres -tAc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$DB'" >/dev/null
  sleep "$OUTAGE_SECS"
  psql_on postgres -c "ALTER DATABASE \"$DB\" ALLOW_CONNECTIONS true" >/dev/null
}
fault_redis() {
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  sleep 1
  start_redis
}
fault_sigkill_b() {
  kill -KILL "$PID_B"
  wait "$PID_B" 2>/dev/null || true
}

echo "| mode | phase | per instance: 2xx the clients saw, refusals by status, connection errors |" >"$WORK/phases.md"
echo "|---|---|---|" >>"$WORK/phases.md"
SUMMARY=()
start_redis
for MODE in "${METER_MODES[@]}"; do
  DB="payg_faults_$MODE"
  mkdir -p "$WORK/$MODE"
  psql_on postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
  CREATED_DBS+=("$DB")
  (cd "$WORK" && DATABASE_URL="$PG_URL/$DB" JWT_SECRET="$JWT_SECRET_FAULTS" RUST_LOG=warn "$PAYG" migrate) \
    >"$WORK/$MODE/migrate.log" 2>&1 || die "payg migrate failed"
  psql_on "$DB" -tA >"$WORK/$MODE/users.txt" <<SQL
INSERT INTO users (id, email, password_hash, name)
SELECT gen_random_uuid(), 'faults-' || g || '@bench.invalid',
       '\$argon2id\$v=19\$m=19456,t=2,p=1\$bench\$not-a-real-hash', 'faults user ' || g
FROM generate_series(1, $((2 * USERS))) AS g
RETURNING id;
SQL
  head -n "$USERS" "$WORK/$MODE/users.txt" >"$WORK/$MODE/users-a.txt"
  tail -n "$USERS" "$WORK/$MODE/users.txt" >"$WORK/$MODE/users-b.txt"
  start_instance "$PORT_A" "$DB" "$MODE"
  PID_A=$STARTED_PID
  start_instance "$PORT_B" "$DB" "$MODE"
  PID_B=$STARTED_PID
  wait_healthy "$PORT_A"
  wait_healthy "$PORT_B"

  phase 6 2 fault_terminate terminate
  phase 10 2 fault_pg_restart pg-restart
  phase $((OUTAGE_SECS + 6)) 2 fault_outage outage
  phase 8 2 fault_redis redis
  phase 6 3 fault_sigkill_b sigkill

  kill -TERM "$PID_A"
  wait "$PID_A" || log "instance A exited with $?"
  PID_A="" PID_B=""

  # Every phase's tally, per user, against the records.
  tallies="[$(for f in "$WORK/$MODE"/*/tally-*.json; do cat "$f"; echo; done | paste -sd, -)]"
  result=$(psql_on "$DB" -tA -v tallies="$tallies" \
    -v a="$(paste -sd, "$WORK/$MODE/users-a.txt")" -v b="$(paste -sd, "$WORK/$MODE/users-b.txt")" <<'SQL'
WITH t AS (SELECT key::uuid AS user_id, sum(value::bigint) AS n
           FROM json_array_elements(:'tallies'::json) AS e(o), json_each_text(e.o) GROUP BY 1),
     d AS (SELECT user_id, sum(calls - failed_calls)::bigint AS n, sum(calls)::bigint AS calls
           FROM usage_records GROUP BY user_id),
     u AS (SELECT unnest(string_to_array(:'a', ','))::uuid AS user_id, 'a' AS inst
           UNION ALL SELECT unnest(string_to_array(:'b', ','))::uuid, 'b'),
     j AS (SELECT u.inst, coalesce(t.n, 0) AS seen, coalesce(d.n, 0) AS counted
           FROM u LEFT JOIN t USING (user_id) LEFT JOIN d USING (user_id))
SELECT string_agg(concat_ws(':', inst, seen, counted, lost, doubled), ' ' ORDER BY inst)
FROM (SELECT inst, sum(seen) AS seen, sum(counted) AS counted,
             sum(greatest(seen - counted, 0)) AS lost, sum(greatest(counted - seen, 0)) AS doubled
      FROM j GROUP BY inst) s;
SQL
  )
  for part in $result; do
    IFS=: read -r inst seen counted lost doubled <<<"$part"
    verdict=ok
    if [ "$inst" = a ] && { [ "$lost" -ne 0 ] || [ "$doubled" -ne 0 ]; }; then verdict="NOT exact"; FAILED=1; fi
    if [ "$inst" = b ] && [ "$MODE" = durable ] && [ "$lost" -ne 0 ]; then verdict="LOST 2xx"; FAILED=1; fi
    if [ "$inst" = b ] && [ "$MODE" = batched ] && [ "$doubled" -ne 0 ]; then verdict="DOUBLED"; FAILED=1; fi
    case "$inst/$MODE" in
      a/*) note="drained on SIGTERM: must be exact" ;;
      b/batched) note="SIGKILLed: may lose its unflushed window (≤ ${FLUSH_MS} ms of calls)" ;;
      b/*) note="SIGKILLed: every 2xx must be counted (a call counted whose answer the kill cut off shows as counted beyond the 2xx)" ;;
    esac
    SUMMARY+=("| $MODE | $inst | $seen | $counted | $lost | $doubled | $note | $verdict |")
  done
done

echo
cat "$WORK/phases.md"
echo
echo "| mode | instance | 2xx seen | billable calls counted | lost | counted beyond the 2xx | | verdict |"
echo "|---|---|---:|---:|---:|---:|---|---|"
printf '%s\n' "${SUMMARY[@]}"
echo
echo "settings: $USERS users and $CONNECTIONS connections per instance, PAYG_METER_FLUSH_MS=$FLUSH_MS," \
  "outage $OUTAGE_SECS s, PAYG_STALE_IF_ERROR and PAYG_AUTH_CACHE_MS at their defaults; $(nproc) CPUs"
if [ "$FAILED" -ne 0 ]; then
  echo "faults: FAILED: a target that must hold did not (see above)" >&2
  exit 1
fi
echo "faults: every target held"
