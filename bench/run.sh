#!/usr/bin/env bash
# payg metering benchmark (a benchmark, not a test).
#
#   bench/run.sh                      # defaults: DURATION=10 CONNECTIONS=64
#   DURATION=3 bench/run.sh           # quick run
#
# For each scenario (hot: 1 user; spread: 1,000 users) it runs the same
# binary in these modes, interleaved (healthz, off, batched, …, healthz,
# off, …) so machine drift hits every mode alike:
#   healthz  GET /healthz of the same server (batched, rate limit on): the
#            bare server, the baseline of "× /healthz"
#   off      PAYG_METER_MODE=off,     JWT,     rate limiting off (the baseline of "× off")
#   batched  PAYG_METER_MODE=batched, JWT,     rate limiting off
#   limited  PAYG_METER_MODE=batched, JWT,     rate limiting on
#   apikey   PAYG_METER_MODE=batched, API key, rate limiting on
#   durable  PAYG_METER_MODE=durable, JWT,     rate limiting off
#   capped   PAYG_METER_MODE=batched, JWT,     rate limiting off, every user
#            with a spending cap too high to refuse (CAP_HIGH): every call
#            reserves its price from budget leased from PostgreSQL (the
#            baseline of its "cost of enforcement" is batched)
# Every metered mode calls GET /api/v1/tools/uuid. "Rate limiting on" is a
# limit too high to refuse anything (RATE_LIMIT_HIGH per minute and as
# burst), so every call goes through the leased GCRA budget.
# In apikey mode the load generator first creates one key per user through
# POST /api/v1/api-keys, then sends X-API-Key. Each run gets a fresh database, its users inserted
# straight in SQL, a fresh `payg serve`, and bench/loadgen.rs as the client
# (it mints its own JWTs and counts its own 2xx responses per user). The
# server is then stopped with SIGTERM (graceful shutdown flushes the meter)
# and usage_records is compared with the load generator's tally: no rows at
# all for healthz and off; every user's calls equal to its 2xx count for
# the others. The servers use a redis-server of the benchmark's own. Around
# each run it reads the commands payg sent that Redis (INFO commandstats)
# and the database's committed and rolled-back transactions
# (pg_stat_database, after the server exited), and prints both per call.
#
# Then it measures how long a logout on one instance takes to be refused on
# another (two servers on one database and Redis; LOGOUT_SAMPLES times).
#
# Prints a markdown table, each mode's throughput as a ratio to /healthz and
# to off, the targets, the machine and the settings. Exits non-zero if any
# count is not exact.
#
# Optional environment:
#   DURATION=10         measured seconds per run
#   CONNECTIONS=64      keep-alive connections of the load generator
#   WARMUP=2            warm-up seconds before each measured window
#   SCENARIOS="hot spread"  which scenarios to run
#   MODES="healthz off batched limited apikey durable capped"  which modes to run
#                       (off is required: the baseline of every ratio)
#   ROUNDS=3            rounds of all modes per scenario; the table and the
#                       ratios use the median req/s (p50, p99) over rounds
#   WORKERS=2           PAYG_WORKERS (actix worker threads), same for every mode
#   LOADGEN_THREADS=2   tokio threads of the load generator
#   FLUSH_MS=200        PAYG_METER_FLUSH_MS (batched flush interval)
#   AUTH_CACHE_MS=30000 PAYG_AUTH_CACHE_MS (how long a user's standing is used)
#   LOGOUT_SAMPLES=200  logouts timed from instance A to instance B (0: skip)
#   BENCH_PORT=18089    port the server under test binds on 127.0.0.1 (and +1)
#   BENCH_REDIS_PORT=18087  port of the benchmark's own redis-server
#   PG_URL=postgres://postgres@127.0.0.1:5432   server (trust auth) for the bench databases
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SERVER_PID=""
# shellcheck source=bench/common.sh
. bench/common.sh

FLUSH_MS=${FLUSH_MS:-200}
BENCH_PORT=${BENCH_PORT:-18089}
POOL_SIZE=16          # PAYG_DB_POOL_SIZE (the default), stated for the record
AUTH_CACHE_MS=${AUTH_CACHE_MS:-30000}  # PAYG_AUTH_CACHE_MS (30000 is payg's default)
LOGOUT_SAMPLES=${LOGOUT_SAMPLES:-200}
# The default per-user rate limit (600/min) would answer the hot user with 429
# after its burst: off (0) in the off, batched and durable modes, and this
# high (one call per µs, payg's finest step) in healthz, limited and apikey.
RATE_LIMIT_HIGH=60000000  # PAYG_RATE_LIMIT_PER_MINUTE and _BURST when on
ENDPOINT=/api/v1/tools/uuid
# The capped mode's spending cap: far above what any run can spend at the
# seeded 0.001 a call, so nothing is refused and every call still reserves.
CAP_HIGH=1000000000
# A Redis of the benchmark's own, so its command count is the servers' alone.
REDIS_HOST=127.0.0.1
REDIS_PORT=${BENCH_REDIS_PORT:-18087}
REDIS_PID=""
# SCENARIOS="hot" or "spread" runs just one (for debugging); default both.
read -r -a SCENARIOS <<<"${SCENARIOS:-hot spread}"
for i in "${!SCENARIOS[@]}"; do
  case ${SCENARIOS[$i]} in
    hot) SCENARIOS[i]=hot:1 ;;
    spread) SCENARIOS[i]=spread:1000 ;;
    *) echo "bench: error: unknown scenario ${SCENARIOS[$i]@Q} (hot, spread)" >&2; exit 1 ;;
  esac
done
read -r -a MODES <<<"${MODES:-healthz off batched limited apikey durable capped}"
[[ " ${MODES[*]} " == *" off "* ]] || { echo "bench: error: MODES must include off (the baseline)" >&2; exit 1; }
# mode → PAYG_METER_MODE, loadgen --auth, PAYG_RATE_LIMIT_PER_MINUTE, path
declare -A METER_OF=([healthz]=batched [off]=off [batched]=batched [limited]=batched [apikey]=batched
  [durable]=durable [capped]=batched)
declare -A AUTH_OF=([healthz]=none [off]=jwt [batched]=jwt [limited]=jwt [apikey]=api-key [durable]=jwt
  [capped]=jwt)
declare -A LIMIT_OF=([healthz]=$RATE_LIMIT_HIGH [off]=0 [batched]=0 [limited]=$RATE_LIMIT_HIGH
  [apikey]=$RATE_LIMIT_HIGH [durable]=0 [capped]=0)
declare -A PATH_OF=([healthz]=/healthz)
declare -A DESCRIBE=([healthz]="GET /healthz (same binary)" [off]="off (JWT)" [batched]="batched (JWT)"
  [limited]="batched + rate limit (JWT)" [apikey]="batched + rate limit (API key)" [durable]="durable (JWT)"
  [capped]="batched + spending cap (JWT)")
for m in "${MODES[@]}"; do
  [ -n "${METER_OF[$m]:-}" ] || { echo "bench: error: unknown mode ${m@Q} (healthz off batched limited apikey durable capped)" >&2; exit 1; }
done
command -v redis-cli >/dev/null 2>&1 || die "redis-cli is required (Redis commands per call)"
# The commands payg sent (round trips), from INFO commandstats: Redis also
# counts each command a Lua script runs (a lease is EVALSHA plus GET, TIME
# and SET inside it), and payg sends none of those itself during a run, so
# they are left out, with the benchmark's own INFO and CONFIG.
redis_commands() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
  awk -F'[:=,]' '/^cmdstat_/ { name = substr($1, 9)
    if (name ~ /^(get|set|time|del|incr|decr|pexpire|pttl|info|config.*)$/) next
    sum += $3 } END { print sum + 0 }'; }
db_transactions() { psql_on postgres -tAc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$1'"; }


for v in DURATION CONNECTIONS WARMUP ROUNDS WORKERS LOADGEN_THREADS FLUSH_MS AUTH_CACHE_MS BENCH_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got ${!v@Q})"
  [ "$v" = WARMUP ] || [ "${!v}" -gt 0 ] || die "$v must be positive"
done
command -v psql >/dev/null 2>&1 || die "psql is required"
command -v curl >/dev/null 2>&1 || die "curl is required"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/payg-bench.XXXXXX")
SERVER_PID=""
CREATED_DBS=()
KEEP_WORK=0


cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "${LOADGEN_PID:-}" ]; then
    kill -TERM "$LOADGEN_PID" 2>/dev/null
    wait "$LOADGEN_PID" 2>/dev/null
  fi
  if [ -n "$SERVER_PID" ]; then
    stop_server >/dev/null 2>&1
  fi
  drop_created_databases
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] || [ "$KEEP_WORK" -eq 1 ]; then
    echo "bench: server logs and load generator output kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ setup

build_bench_binaries
start_private_redis "$REDIS_PORT" "$WORK/redis.log"

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$BENCH_PORT/"; then
  die "something already listens on 127.0.0.1:$BENCH_PORT; set BENCH_PORT"
fi

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# One secret for the whole run (64 hex characters ≥ the 32 bytes payg requires).
JWT_SECRET_BENCH=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

# ------------------------------------------------------------------ one run

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
NCPU=$(nproc)
LOADGEN_PID=""
# user+nice+system+irq+softirq ticks of the whole machine
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The benchmark's own processes: server, load generator, Redis, and the
# PostgreSQL processes not serving another database (backends of $1 and
# the shared background workers).
bench_pids() {
  local others p
  others=" $(psql_on postgres -tAc "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity
    WHERE datname IS NOT NULL AND datname <> '$1'") "
  echo "$SERVER_PID $LOADGEN_PID $REDIS_PID"
  for p in $(pgrep -x postgres || true); do
    [[ $others == *" $p "* ]] || echo "$p"
  done
}

declare -A RPS P50 P99 OK EXACT OTHER REDIS_PER_CALL PG_PER_CALL
FAILED=0

run_one() { # scenario, users, mode, round
  local scenario=$1 users=$2 mode=$3 round=$4
  local db="payg_bench_${mode}_${scenario}"
  local url="$PG_URL/$db"
  local tag="$scenario/$mode#$round"
  local dir="$WORK/${scenario}_${mode}_$round"
  mkdir -p "$dir"

  psql_on postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  CREATED_DBS+=("$db")
  (cd "$dir" && DATABASE_URL="$url" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
    "$PAYG" migrate) >"$dir/migrate.log" 2>&1 || {
    cat "$dir/migrate.log" >&2
    die "$tag: payg migrate failed"
  }
  psql_on "$db" -tA >"$dir/users.txt" <<SQL
INSERT INTO users (id, email, password_hash, name)
SELECT gen_random_uuid(), 'bench-' || g || '@bench.invalid',
       '\$argon2id\$v=19\$m=19456,t=2,p=1\$bench\$not-a-real-hash', 'bench user ' || g
FROM generate_series(1, $users) AS g
RETURNING id;
SQL
  [ "$(grep -c . "$dir/users.txt")" -eq "$users" ] || die "$tag: expected $users user ids"
  if [ "$mode" = capped ]; then
    psql_on "$db" -qc "UPDATE users SET cap_user = $CAP_HIGH" >/dev/null
  fi

  # Run from $dir so no developer .env is picked up.
  (cd "$dir" && exec env DATABASE_URL="$url" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
    PAYG_METER_MODE="${METER_OF[$mode]}" PAYG_METER_FLUSH_MS="$FLUSH_MS" PAYG_WORKERS="$WORKERS" \
    PAYG_BIND="127.0.0.1:$BENCH_PORT" PAYG_DB_POOL_SIZE="$POOL_SIZE" \
    PAYG_AUTH_CACHE_MS="$AUTH_CACHE_MS" PAYG_RATE_LIMIT_PER_MINUTE="${LIMIT_OF[$mode]}" \
    PAYG_RATE_LIMIT_BURST="${LIMIT_OF[$mode]}" PAYG_CLIENT_AUTH_PER_MINUTE=0 \
    PAYG_METRICS_BIND=127.0.0.1:0 PAYG_REDIS_PREFIX="payg-bench:$db:" REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT" \
    PAYG_BILLING_TZ=UTC PAYG_LOG_FORMAT=pretty \
    "$PAYG" serve --no-migrate) >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  local i
  for ((i = 0; ; i++)); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" || true
      SERVER_PID=""
      cat "$dir/server.log" >&2
      die "$tag: the server exited during startup"
    fi
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$BENCH_PORT/healthz" && break
    [ "$i" -lt 300 ] || die "$tag: /healthz did not answer within 30 s"
    sleep 0.1
  done

  log "$tag: ${DURATION}s (+${WARMUP}s warm-up), $CONNECTIONS connections, $users user(s), ${DESCRIBE[$mode]}"
  local redis_before xacts_before
  redis_before=$(redis_commands)
  xacts_before=$(db_transactions "$db")
  JWT_SECRET="$JWT_SECRET_BENCH" "$LOADGEN" \
    --url "http://127.0.0.1:$BENCH_PORT" --path "${PATH_OF[$mode]:-$ENDPOINT}" \
    --connections "$CONNECTIONS" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
    --threads "$LOADGEN_THREADS" --users-file "$dir/users.txt" --auth "${AUTH_OF[$mode]}" \
    --tally-file "$dir/tally.json" >"$dir/loadgen.json" &
  LOADGEN_PID=$!
  # CPU taken by processes outside the benchmark, sampled over the middle
  # of the measured window (from 10% to 90% of it, while the load runs).
  sleep "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print w + d * 0.1 }')"
  local -A t0=()
  local b0 n0 p
  b0=$(machine_busy) n0=$(date +%s%N)
  for p in $(bench_pids "$db"); do t0[$p]=$(cpu_ticks "$p"); done
  sleep "$(awk -v d="$DURATION" 'BEGIN { print d * 0.8 }')"
  local b1 n1 ours=0 pids
  pids=$(bench_pids "$db")
  for p in $pids; do ours=$((ours + $(cpu_ticks "$p") - ${t0[$p]:-0})); done
  b1=$(machine_busy) n1=$(date +%s%N)
  local other
  other=$(awk -v busy=$((b1 - b0)) -v ours="$ours" -v hz="$CLK_TCK" -v n="$NCPU" -v ns=$((n1 - n0)) \
    'BEGIN { o = (busy - ours) / (hz * n * ns / 1e9) * 100; if (o < 0) o = 0; printf "%d", o + 0.5 }')
  wait "$LOADGEN_PID" || { LOADGEN_PID=""; die "$tag: the load generator failed"; }
  LOADGEN_PID=""

  local server_rc=0
  stop_server || server_rc=$?
  # After the exit: the shutdown's last flush and lease returns are in,
  # and every backend has reported its transactions.
  local redis_after xacts_after
  redis_after=$(redis_commands)
  xacts_after=$(db_transactions "$db")

  # Parse the load generator's line and compare the records with its tally,
  # both in PostgreSQL (no jq needed).
  local summary
  summary=$(psql_on "$db" -tA -v result="$(cat "$dir/loadgen.json")" \
    -v tally="$(cat "$dir/tally.json")" <<'SQL'
WITH r AS (SELECT :'result'::json AS j),
     t AS (SELECT key::uuid AS user_id, value::bigint AS n
           FROM json_each_text(:'tally'::json) WHERE value::bigint > 0),
     d AS (SELECT user_id, sum(calls)::bigint AS n FROM usage_records GROUP BY user_id),
     cmp AS (SELECT count(d.user_id) AS db_rows,
                    coalesce(sum(d.n), 0) AS db_calls,
                    coalesce(sum(t.n), 0) AS tally_calls,
                    count(*) FILTER (WHERE coalesce(t.n, 0) <> coalesce(d.n, 0)) AS mismatched
             FROM t FULL JOIN d USING (user_id))
SELECT concat_ws('|', j->>'requests_per_sec', j->>'p50_us', j->>'p99_us', j->>'ok',
                 j->>'non_2xx', j->>'errors', db_rows, db_calls, tally_calls, mismatched)
FROM r, cmp;
SQL
  )
  local rps p50 p99 ok non2xx errors db_rows db_calls tally_calls mismatched
  IFS='|' read -r rps p50 p99 ok non2xx errors db_rows db_calls tally_calls mismatched <<<"$summary"
  [ -n "${mismatched:-}" ] || die "$tag: could not read the results ($summary)"
  rps=${rps%.*}

  local calls=$((ok + non2xx))
  REDIS_PER_CALL[$scenario,$mode,$round]=$(awk -v d=$((redis_after - redis_before)) -v n="$calls" \
    'BEGIN { if (n > 0) printf "%.4f", d / n; else print "n/a" }')
  PG_PER_CALL[$scenario,$mode,$round]=$(awk -v d=$((xacts_after - xacts_before)) -v n="$calls" \
    'BEGIN { if (n > 0) printf "%.4f", d / n; else print "n/a" }')

  local exact
  if [ "$mode" = off ] || [ "$mode" = healthz ]; then
    if [ "$db_rows" -eq 0 ]; then exact="yes (0 rows)"; else exact="NO: $db_rows rows in off mode"; fi
  elif [ "$mismatched" -eq 0 ] && [ "$db_calls" -eq "$ok" ] && [ "$ok" -gt 0 ]; then
    exact="yes ($db_rows users)"
  else
    exact="NO: $mismatched of the users differ (db $db_calls, loadgen $tally_calls)"
  fi
  [ "$server_rc" -eq 0 ] || exact="$exact; server exit $server_rc"
  [ "$non2xx" -eq 0 ] && [ "$errors" -eq 0 ] || exact="$exact; non-2xx $non2xx, errors $errors"
  if [[ $exact != yes* ]] || [ "$server_rc" -ne 0 ]; then
    FAILED=1
    KEEP_WORK=1
  fi

  local key="$scenario,$mode,$round"
  RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99 OK[$key]=$ok EXACT[$key]=$exact OTHER[$key]=$other
  log "$tag: $rps req/s, p50 ${p50}µs, p99 ${p99}µs, ok $ok, exact: $exact, other processes ${other}% CPU," \
    "Redis commands/call ${REDIS_PER_CALL[$scenario,$mode,$round]}, PostgreSQL transactions/call ${PG_PER_CALL[$scenario,$mode,$round]}"
}

# Two servers on one database and Redis; loadgen times LOGOUT_SAMPLES
# logouts on the first until the second refuses the token.
LOGOUT_RESULT=""
run_logout_latency() {
  local db=payg_bench_logout dir="$WORK/logout" pids=() port
  mkdir -p "$dir"
  psql_on postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  CREATED_DBS+=("$db")
  (cd "$dir" && DATABASE_URL="$PG_URL/$db" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn "$PAYG" migrate) \
    >"$dir/migrate.log" 2>&1 || die "logout: payg migrate failed"
  psql_on "$db" -tA >"$dir/users.txt" <<SQL
INSERT INTO users (id, email, password_hash, name)
VALUES (gen_random_uuid(), 'bench-logout@bench.invalid',
        '\$argon2id\$v=19\$m=19456,t=2,p=1\$bench\$not-a-real-hash', 'bench user')
RETURNING id;
SQL
  for port in "$BENCH_PORT" "$((BENCH_PORT + 1))"; do
    (cd "$dir" && exec env DATABASE_URL="$PG_URL/$db" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
      PAYG_BIND="127.0.0.1:$port" PAYG_METRICS_BIND=127.0.0.1:0 PAYG_WORKERS="$WORKERS" \
      PAYG_REDIS_PREFIX="payg-bench:$db:" REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT" \
      "$PAYG" serve --no-migrate) >"$dir/server-$port.log" 2>&1 &
    pids+=($!)
  done
  local i
  for port in "$BENCH_PORT" "$((BENCH_PORT + 1))"; do
    for ((i = 0; ; i++)); do
      curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" && break
      [ "$i" -lt 300 ] || die "logout: the server on $port did not answer within 30 s"
      sleep 0.1
    done
  done
  LOGOUT_RESULT=$(JWT_SECRET="$JWT_SECRET_BENCH" "$LOADGEN" --url "http://127.0.0.1:$BENCH_PORT" \
    --url-b "http://127.0.0.1:$((BENCH_PORT + 1))" --users-file "$dir/users.txt" \
    --logout-latency "$LOGOUT_SAMPLES") || die "logout: the load generator failed"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}

for entry in "${SCENARIOS[@]}"; do
  scenario=${entry%%:*}
  users=${entry#*:}
  for ((round = 1; round <= ROUNDS; round++)); do
    for mode in "${MODES[@]}"; do
      run_one "$scenario" "$users" "$mode" "$round"
    done
  done
done

if [ "$LOGOUT_SAMPLES" -gt 0 ]; then
  log "logout propagation: $LOGOUT_SAMPLES logouts on one instance, polled on another"
  run_logout_latency
fi

# ------------------------------------------------------------------ report

label_of() { echo "$1 ($2 user$([ "$2" -eq 1 ] || echo s))"; }

# One row per scenario and mode: median req/s, p50 and p99 over the rounds,
# the ratios of the medians, Redis commands and PostgreSQL transactions per
# call (medians), ok summed, exact only if every round was.
declare -A MED_RPS MED_P50 MED_P99
for entry in "${SCENARIOS[@]}"; do
  scenario=${entry%%:*}
  for mode in "${MODES[@]}"; do
    rps=() p50=() p99=()
    for ((round = 1; round <= ROUNDS; round++)); do
      rps+=("${RPS[$scenario,$mode,$round]}") p50+=("${P50[$scenario,$mode,$round]}")
      p99+=("${P99[$scenario,$mode,$round]}")
    done
    MED_RPS[$scenario,$mode]=$(median "${rps[@]}")
    MED_P50[$scenario,$mode]=$(median "${p50[@]}")
    MED_P99[$scenario,$mode]=$(median "${p99[@]}")
  done
done
has_mode() { [[ " ${MODES[*]} " == *" $1 "* ]]; }
median_of() { # array name prefix (REDIS_PER_CALL / PG_PER_CALL), scenario, mode
  local -n values=$1
  local round all=()
  for ((round = 1; round <= ROUNDS; round++)); do all+=("${values[$2,$3,$round]}"); done
  printf '%s\n' "${all[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
echo
echo "| scenario | mode | req/s | × /healthz | × off | p50 | p99 | Redis cmds/call | PG xacts/call | ok | exact? |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for entry in "${SCENARIOS[@]}"; do
  scenario=${entry%%:*}
  users=${entry#*:}
  for mode in "${MODES[@]}"; do
    p50=() ok=0 exact=""
    for ((round = 1; round <= ROUNDS; round++)); do
      key="$scenario,$mode,$round"
      p50+=("${P50[$key]}")
      ok=$((ok + OK[$key]))
      if [[ ${EXACT[$key]} != yes* ]]; then exact="$exact${exact:+; }#$round ${EXACT[$key]}"; fi
    done
    if [ -z "$exact" ]; then
      exact=${EXACT[$scenario,$mode,1]}
      [ "$ROUNDS" -eq 1 ] || exact="$exact, all $ROUNDS rounds"
    fi
    vs_healthz=n/a
    has_mode healthz && vs_healthz=$(ratio "${MED_RPS[$scenario,$mode]}" "${MED_RPS[$scenario,healthz]}")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label_of "$scenario" "$users")" \
      "${DESCRIBE[$mode]}" "${MED_RPS[$scenario,$mode]}" "$vs_healthz" \
      "$(ratio "${MED_RPS[$scenario,$mode]}" "${MED_RPS[$scenario,off]}")" \
      "$(us "$(median "${p50[@]}")")" "$(us "${MED_P99[$scenario,$mode]}")" \
      "$(median_of REDIS_PER_CALL "$scenario" "$mode")" "$(median_of PG_PER_CALL "$scenario" "$mode")" \
      "$ok" "$exact"
  done
done
echo
ratio_line() { # scenario, mode, baseline mode
  local scenario=$1 mode=$2 base=$3 line per="" round
  line="$scenario: $mode/$base = $(ratio "${MED_RPS[$scenario,$mode]}" "${MED_RPS[$scenario,$base]}")"
  if [ "$ROUNDS" -gt 1 ]; then
    for ((round = 1; round <= ROUNDS; round++)); do
      per="$per $(ratio "${RPS[$scenario,$mode,$round]}" "${RPS[$scenario,$base,$round]}")"
    done
    line="$line (per round:$per)"
  fi
  echo "$line"
}
verdict() { awk -v ok="$1" 'BEGIN { print ok ? "met" : "NOT met" }'; }
target_ratio() { # scenario, mode, baseline, at least
  local r
  r=$(ratio "${MED_RPS[$1,$2]}" "${MED_RPS[$1,$3]}")
  echo "$1: target $2/$3 >= $4: $r, $(verdict "$(awk -v r="$r" -v t="$4" 'BEGIN { print (r >= t) }')")"
}
target_p99() { # scenario, mode, baseline, at most µs
  local added=$((MED_P99[$1,$2] - MED_P99[$1,$3]))
  echo "$1: target p99 added ($2 over $3) <= $(us "$4"): $(us "$added"), $(verdict "$((added <= $4))")"
}
for entry in "${SCENARIOS[@]}"; do
  scenario=${entry%%:*}
  for mode in "${MODES[@]}"; do
    [ "$mode" = off ] && continue
    ratio_line "$scenario" "$mode" off
    if has_mode healthz && [ "$mode" != healthz ]; then ratio_line "$scenario" "$mode" healthz; fi
  done
  if has_mode healthz; then
    if has_mode apikey; then
      target_ratio "$scenario" apikey healthz 0.75
      target_p99 "$scenario" apikey healthz 1000
    fi
    if has_mode batched; then target_ratio "$scenario" batched healthz 0.70; fi
  fi
  if has_mode apikey; then
    r=$(median_of REDIS_PER_CALL "$scenario" apikey)
    echo "$scenario: target Redis commands per metered call (apikey) <= 0.05: $r," \
      "$(verdict "$(awk -v r="$r" 'BEGIN { print (r <= 0.05) }')")"
  fi
  if has_mode durable; then
    target_ratio "$scenario" durable off 0.5
    target_p99 "$scenario" durable off 10000
  fi
  if has_mode capped && has_mode batched; then
    target_ratio "$scenario" capped batched 0.9
    added=$((MED_P50[$scenario,capped] - MED_P50[$scenario,batched]))
    echo "$scenario: target p50 added (capped over batched) <= $(us 1000): $(us "$added"), $(verdict "$((added <= 1000))")"
  fi
done
if [ -n "$LOGOUT_RESULT" ]; then
  lp50=$(sed -E 's/.*"p50_us":([0-9]+).*/\1/' <<<"$LOGOUT_RESULT")
  lp99=$(sed -E 's/.*"p99_us":([0-9]+).*/\1/' <<<"$LOGOUT_RESULT")
  lmax=$(sed -E 's/.*"max_us":([0-9]+).*/\1/' <<<"$LOGOUT_RESULT")
  echo "logout on instance A refused on instance B ($LOGOUT_SAMPLES samples): p50 $(us "$lp50"), p99 $(us "$lp99")," \
    "max $(us "$lmax"); target p99 <= 100 ms: $(verdict "$((lp99 <= 100000))")"
fi
max_other=0 max_at=""
for key in "${!OTHER[@]}"; do
  if [ "${OTHER[$key]}" -gt "$max_other" ]; then max_other=${OTHER[$key]} max_at=${key//,/\/}; fi
done
echo
echo "other processes (not the server, load generator, PostgreSQL or Redis; includes kernel softirq time) took at most" \
  "${max_other}% of the CPUs during a measured window${max_at:+ ($max_at)}$(
    [ "$max_other" -le 15 ] || echo "; figures from a busy machine are noisy: rerun when it is idle")"
if [ "$ROUNDS" -gt 1 ]; then
  echo
  echo "Every run, in the order run:"
  echo
  echo "| scenario | round | mode | req/s | p50 | p99 | ok | exact? | other CPU |"
  echo "|---|---:|---|---:|---:|---:|---:|---|---:|"
  for entry in "${SCENARIOS[@]}"; do
    scenario=${entry%%:*}
    users=${entry#*:}
    for ((round = 1; round <= ROUNDS; round++)); do
      for mode in "${MODES[@]}"; do
        key="$scenario,$mode,$round"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s%% |\n' "$(label_of "$scenario" "$users")" \
          "$round" "${DESCRIBE[$mode]}" "${RPS[$key]}" "$(us "${P50[$key]}")" "$(us "${P99[$key]}")" "${OK[$key]}" \
          "${EXACT[$key]}" "${OTHER[$key]}"
      done
    done
  done
fi
echo
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -sr); load average before/after: $LOADAVG_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "settings: GET $ENDPOINT, $CONNECTIONS connections, ${DURATION}s measured after ${WARMUP}s warm-up," \
  "ROUNDS=$ROUNDS (medians over rounds of ${MODES[*]} run back to back); server PAYG_WORKERS=$WORKERS," \
  "PAYG_DB_POOL_SIZE=$POOL_SIZE, PAYG_AUTH_CACHE_MS=$AUTH_CACHE_MS, PAYG_RATE_LIMIT_PER_MINUTE=0 (off) or $RATE_LIMIT_HIGH with the same burst (healthz, limited, apikey), PAYG_METER_FLUSH_MS=$FLUSH_MS, RUST_LOG=warn;" \
  "loadgen $LOADGEN_THREADS threads on the same machine; $(psql_on postgres -tAc 'SHOW server_version' | head -1 | sed 's/^/PostgreSQL /')"
echo "ok = every 2xx the load generator counted (warm-up included), compared per user with usage_records after SIGTERM;" \
  "p99 is at full load (closed loop, $CONNECTIONS connections), so it includes queueing; Redis commands and PostgreSQL" \
  "transactions per call count everything the server did during the run (warm-up, flushes, shutdown) over its calls"

if [ "$FAILED" -ne 0 ]; then
  echo "bench: FAILED: some counts were not exact (or a server did not exit cleanly)" >&2
  exit 1
fi
