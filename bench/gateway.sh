#!/usr/bin/env bash
# payg gateway benchmark (a benchmark, not a test).
#
#   bench/gateway.sh                  # defaults: DURATION=10 CONNECTIONS=64 ROUNDS=3
#   DURATION=3 ROUNDS=1 bench/gateway.sh   # quick run
#
# One minimal upstream — nginx (Debian's nginx-light) answering a small JSON
# body over keep-alive — called four ways, interleaved in every round so
# machine drift hits them alike:
#   direct     the upstream itself (no credential)
#   nginx      through nginx `proxy_pass` with upstream keep-alive
#   payg-off   through payg's gateway, PAYG_METER_MODE=off, JWT, no rate limit
#   payg       through payg's gateway, batched metering + API key + rate limit
#              on (a limit too high to refuse: the full GCRA step every call)
# Each payg run gets a fresh database, its users inserted in SQL, the API put
# behind payg with `payg catalog apply`, and bench/loadgen.rs as the client;
# after SIGTERM the usage records must equal the load generator's own tally
# of 2xx per user (and be empty for payg-off).
#
# Then, at a fixed rate of half of payg's median peak, direct and payg again:
# the p99 payg adds over the direct call. Last, payg's resident memory while
# a 200 MiB download streams through it (sampled every 100 ms).
#
# Prints the figures, the ratios (target: payg ≥ 0.6 × nginx; p99 added ≤ 1 ms
# at half of payg's peak; memory flat within ± 10 MB) and the settings. Exits
# non-zero if a count is not exact.
#
# Optional environment: DURATION=10 CONNECTIONS=64 WARMUP=2 ROUNDS=3 WORKERS=2
# LOADGEN_THREADS=2 USERS=100 PG_URL=postgres://postgres@127.0.0.1:5432
# PORT_BASE=18190 (upstream, nginx proxy and payg take PORT_BASE, +1, +2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SERVER_PID=""
# shellcheck source=bench/common.sh
. bench/common.sh

USERS=${USERS:-100}
PORT_BASE=${PORT_BASE:-18190}
UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
PAYG_PORT=$((PORT_BASE + 2))
RATE_LIMIT_HIGH=60000000
DOWNLOAD_MIB=200
MODES=(direct nginx payg-off payg)
declare -A DESCRIBE=([direct]="direct to the upstream" [nginx]="nginx proxy_pass (keep-alive)"
  [payg-off]="payg gateway, metering off (JWT)" [payg]="payg gateway, batched + API key + rate limit")

for v in DURATION CONNECTIONS WARMUP ROUNDS WORKERS LOADGEN_THREADS USERS PORT_BASE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got ${!v@Q})"
done
command -v psql >/dev/null 2>&1 || die "psql is required"
command -v curl >/dev/null 2>&1 || die "curl is required"

NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
  command -v apt-get >/dev/null 2>&1 || die "nginx is required (Debian: apt-get install nginx-light)"
  log "installing nginx-light with apt-get"
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
[ -x "$NGINX" ] || die "nginx not found after installing nginx-light"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/payg-gw-bench.XXXXXX")
# nginx workers run as an unprivileged user when started as root: let them read the download.
chmod 755 "$WORK"
LOADGEN_PID="" KEEP_WORK=0
NGINX_PIDS=()
CREATED_DBS=()


cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -z "$LOADGEN_PID" ] || kill -TERM "$LOADGEN_PID" 2>/dev/null
  [ -z "$SERVER_PID" ] || stop_server >/dev/null 2>&1
  for conf in "$WORK"/nginx-*.conf; do
    [ -f "$conf" ] && "$NGINX" -c "$conf" -p "$WORK" -s stop 2>/dev/null
  done
  drop_created_databases
  if [ "$rc" -ne 0 ] || [ "$KEEP_WORK" -eq 1 ]; then
    echo "bench: logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_bench_binaries
for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$PAYG_PORT"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    die "something already listens on 127.0.0.1:$port; set PORT_BASE"
  fi
done
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
JWT_SECRET_BENCH=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

# ------------------------------------------------------------------ nginx

mkdir -p "$WORK/logs" "$WORK/www"
truncate -s "${DOWNLOAD_MIB}M" "$WORK/www/big.bin"
nginx_conf() { # name, workers, server block
  cat >"$WORK/nginx-$1.conf" <<CONF
worker_processes $2;
pid $WORK/nginx-$1.pid;
error_log $WORK/logs/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  $3
}
CONF
  "$NGINX" -c "$WORK/nginx-$1.conf" -p "$WORK" || die "nginx ($1) did not start"
}
# The upstream: one worker, a small JSON body, and the download.
nginx_conf upstream 1 "server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type application/json; return 200 '{\"ok\":true}'; }
    location = /big.bin { root $WORK/www; }
  }"
# The nginx baseline proxy: as many workers as payg has, upstream keep-alive.
nginx_conf proxy "$WORKERS" "upstream bench_upstream { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
for port in "$UPSTREAM_PORT" "$NGINX_PORT"; do
  for _ in $(seq 1 50); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/x" && break
    sleep 0.1
  done
done
curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/x" || die "nginx is not answering"

# The users every run uses (ids also go into each payg database).
for ((i = 0; i < USERS; i++)); do cat /proc/sys/kernel/random/uuid; done >"$WORK/users.txt"

# ------------------------------------------------------------------ payg

start_payg() { # database, meter mode, rate limit; leaves SERVER_PID
  local db=$1 meter=$2 limit=$3 dir=$WORK/$1
  local url="$PG_URL/$db"
  mkdir -p "$dir"
  psql_on postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  CREATED_DBS+=("$db")
  (cd "$dir" && DATABASE_URL="$url" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn "$PAYG" migrate) \
    >"$dir/migrate.log" 2>&1 || { cat "$dir/migrate.log" >&2; die "$db: migrate failed"; }
  psql_on "$db" -c "INSERT INTO users (id, email, password_hash, name)
    SELECT id::uuid, 'bench-' || id || '@bench.invalid', '\$argon2id\$not-a-real-hash', 'bench'
    FROM unnest(string_to_array('$(paste -sd, "$WORK/users.txt")', ',')) AS id" >/dev/null
  cat >"$dir/catalog.toml" <<TOML
[[api]]
slug = "bench"
name = "Bench upstream"
method = "GET"
route = "/bench"

[api.upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"
TOML
  (cd "$dir" && DATABASE_URL="$url" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
    "$PAYG" catalog apply catalog.toml) >"$dir/apply.log" 2>&1 || { cat "$dir/apply.log" >&2; die "$db: catalog apply failed"; }
  (cd "$dir" && exec env DATABASE_URL="$url" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
    PAYG_METER_MODE="$meter" PAYG_WORKERS="$WORKERS" PAYG_BIND="127.0.0.1:$PAYG_PORT" \
    PAYG_RATE_LIMIT_PER_MINUTE="$limit" PAYG_RATE_LIMIT_BURST="$limit" PAYG_CLIENT_AUTH_PER_MINUTE=0 \
    PAYG_METRICS_BIND=127.0.0.1:0 PAYG_REDIS_PREFIX="payg-gw-bench:$db:" PAYG_BILLING_TZ=UTC \
    "$PAYG" serve --no-migrate) >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  local i
  for ((i = 0; ; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/server.log" >&2; die "$db: the server exited"; }
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$PAYG_PORT/healthz" && break
    [ "$i" -lt 300 ] || die "$db: /healthz did not answer within 30 s"
    sleep 0.1
  done
}

# The usage rows against the load generator's tally: "yes (N users)" or why not.
exactness() { # database, mode, loadgen json, tally file
  local db=$1 mode=$2 result
  result=$(psql_on "$db" -tA -v tally="$(cat "$4")" <<'SQL'
WITH t AS (SELECT key::uuid AS user_id, value::bigint AS n FROM json_each_text(:'tally'::json) WHERE value::bigint > 0),
     d AS (SELECT user_id, sum(calls)::bigint AS n FROM usage_records GROUP BY user_id)
SELECT concat_ws('|', count(d.user_id), coalesce(sum(d.n), 0), coalesce(sum(t.n), 0),
                 count(*) FILTER (WHERE coalesce(t.n, 0) <> coalesce(d.n, 0)))
FROM t FULL JOIN d USING (user_id);
SQL
  )
  local rows calls tally mismatched
  IFS='|' read -r rows calls tally mismatched <<<"$result"
  if [ "$mode" = payg-off ]; then
    [ "$rows" -eq 0 ] && echo "yes (0 rows)" || echo "NO: $rows rows with metering off"
  elif [ "$mismatched" -eq 0 ] && [ "$calls" -eq "$tally" ] && [ "$tally" -gt 0 ]; then
    echo "yes ($rows users, $calls calls)"
  else
    echo "NO: $mismatched users differ (db $calls, loadgen $tally)"
  fi
}

declare -A RPS P50 P99 EXACT
FAILED=0

run_one() { # mode, round, [rate]
  local mode=$1 round=$2 rate=${3:-} url path auth db="" tag
  tag="$mode#$round${rate:+@${rate}/s}"
  local dir="$WORK/run-${mode}-${round}${rate:+-rate}"
  mkdir -p "$dir"
  case $mode in
    direct) url="http://127.0.0.1:$UPSTREAM_PORT" path=/bench auth=none ;;
    nginx) url="http://127.0.0.1:$NGINX_PORT" path=/bench auth=none ;;
    payg-off)
      db="payg_gwbench_off" url="http://127.0.0.1:$PAYG_PORT" path=/bench/x auth=jwt
      start_payg "$db" off 0 ;;
    payg)
      db="payg_gwbench_on" url="http://127.0.0.1:$PAYG_PORT" path=/bench/x auth=api-key
      start_payg "$db" batched "$RATE_LIMIT_HIGH" ;;
  esac
  log "$tag: ${DURATION}s (+${WARMUP}s warm-up), $CONNECTIONS connections, ${DESCRIBE[$mode]}"
  JWT_SECRET="$JWT_SECRET_BENCH" "$LOADGEN" --url "$url" --path "$path" \
    --connections "$CONNECTIONS" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
    --threads "$LOADGEN_THREADS" --users-file "$WORK/users.txt" --auth "$auth" \
    ${rate:+--rate "$rate"} --tally-file "$dir/tally.json" >"$dir/loadgen.json" &
  LOADGEN_PID=$!
  wait "$LOADGEN_PID" || { LOADGEN_PID=""; die "$tag: the load generator failed"; }
  LOADGEN_PID=""
  local exact="n/a (no payg)" server_rc=0
  if [ -n "$db" ]; then
    stop_server || server_rc=$?
    exact=$(exactness "$db" "$mode" "$dir/loadgen.json" "$dir/tally.json")
    [ "$server_rc" -eq 0 ] || exact="$exact; server exit $server_rc"
  fi
  local json rps p50 p99 non2xx errors
  json=$(cat "$dir/loadgen.json")
  field() { sed -n "s/.*\"$1\":\\([0-9.]*\\).*/\\1/p" <<<"$json"; }
  rps=$(field requests_per_sec) p50=$(field p50_us) p99=$(field p99_us)
  non2xx=$(field non_2xx) errors=$(field errors)
  rps=${rps%.*}
  if [ "${non2xx:-1}" -ne 0 ] || [ "${errors:-1}" -ne 0 ]; then exact="$exact; non-2xx $non2xx, errors $errors"; fi
  if [[ $exact != yes* && $exact != n/a* ]] || [[ $exact == *non-2xx* ]] || [ "$server_rc" -ne 0 ]; then
    FAILED=1 KEEP_WORK=1
  fi
  local key="$mode,$round${rate:+,rate}"
  RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99 EXACT[$key]=$exact
  log "$tag: $rps req/s, p50 ${p50}µs, p99 ${p99}µs, exact: $exact"
}

for ((round = 1; round <= ROUNDS; round++)); do
  for mode in "${MODES[@]}"; do
    run_one "$mode" "$round"
  done
done

declare -A MED MED50 MED99
for mode in "${MODES[@]}"; do
  r=() a=() b=()
  for ((round = 1; round <= ROUNDS; round++)); do
    r+=("${RPS[$mode,$round]}") a+=("${P50[$mode,$round]}") b+=("${P99[$mode,$round]}")
  done
  MED[$mode]=$(median "${r[@]}") MED50[$mode]=$(median "${a[@]}") MED99[$mode]=$(median "${b[@]}")
done

# Fixed rate: half of payg's median peak, direct then payg.
HALF=$((MED[payg] / 2))
[ "$HALF" -gt 0 ] || die "payg served nothing"
run_one direct 1 "$HALF"
run_one payg 1 "$HALF"

# Memory while streaming the download through payg (metered, API key).
start_payg payg_gwbench_stream batched "$RATE_LIMIT_HIGH"
KEY=$(JWT_SECRET="$JWT_SECRET_BENCH" "$LOADGEN" --url "http://127.0.0.1:$PAYG_PORT" \
  --users-file "$WORK/users.txt" --print-api-key)
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status"; }
# A few small calls first, so the worker's client pool exists before the baseline.
for _ in 1 2 3 4; do curl -sf -o /dev/null -H "x-api-key: $KEY" "http://127.0.0.1:$PAYG_PORT/bench/x"; done
RSS_BEFORE=$(rss)
curl -sf -o /dev/null --limit-rate 50M -w '%{size_download} %{http_code}\n' -H "x-api-key: $KEY" \
  "http://127.0.0.1:$PAYG_PORT/bench/big.bin" >"$WORK/download.txt" &
CURL_PID=$!
RSS_MIN=$RSS_BEFORE RSS_MAX=$RSS_BEFORE SAMPLES=0
while kill -0 "$CURL_PID" 2>/dev/null; do
  r=$(rss) SAMPLES=$((SAMPLES + 1))
  [ "$r" -gt "$RSS_MAX" ] && RSS_MAX=$r
  [ "$r" -lt "$RSS_MIN" ] && RSS_MIN=$r
  sleep 0.1
done
wait "$CURL_PID" || die "the download through payg failed"
read -r DOWNLOADED DOWNLOAD_STATUS <"$WORK/download.txt"
RSS_AFTER=$(rss)
stop_server || true
[ "$DOWNLOADED" -eq $((DOWNLOAD_MIB * 1024 * 1024)) ] && [ "$DOWNLOAD_STATUS" = 200 ] ||
  { FAILED=1; log "download: got $DOWNLOADED bytes, HTTP $DOWNLOAD_STATUS"; }

# ------------------------------------------------------------------ report

echo
echo "| path | req/s | p50 | p99 | exact? |"
echo "|---|---:|---:|---:|---|"
for mode in "${MODES[@]}"; do
  exact=""
  for ((round = 1; round <= ROUNDS; round++)); do
    e=${EXACT[$mode,$round]}
    [[ $e == yes* || $e == n/a* ]] || exact="$exact${exact:+; }#$round $e"
  done
  if [ -z "$exact" ]; then
    exact=${EXACT[$mode,1]%% (*}
    [ "$exact" != yes ] || exact="yes, all $ROUNDS rounds"
    [ "${EXACT[$mode,1]}" != "yes (0 rows)" ] || exact="yes (0 rows), all $ROUNDS rounds"
    [[ ${EXACT[$mode,1]} != n/a* ]] || exact="n/a (no payg)"
  fi
  printf '| %s | %s | %s | %s | %s |\n' "${DESCRIBE[$mode]}" "${MED[$mode]}" "$(us "${MED50[$mode]}")" \
    "$(us "${MED99[$mode]}")" "$exact"
done
echo
per_round() { local out="" round; for ((round = 1; round <= ROUNDS; round++)); do
  out="$out $(ratio "${RPS[$1,$round]}" "${RPS[$2,$round]}")"; done; echo "${out# }"; }
R=$(ratio "${MED[payg]}" "${MED[nginx]}")
echo "payg (metered) / nginx proxy_pass = $R (per round: $(per_round payg nginx)); target >= 0.6: $(awk -v r="$R" 'BEGIN { print (r >= 0.6) ? "met" : "NOT met" }')"
echo "payg-off / nginx proxy_pass = $(ratio "${MED[payg-off]}" "${MED[nginx]}") (per round: $(per_round payg-off nginx))"
echo "payg (metered) / payg-off = $(ratio "${MED[payg]}" "${MED[payg-off]}")"
echo "nginx proxy_pass / direct = $(ratio "${MED[nginx]}" "${MED[direct]}"); payg (metered) / direct = $(ratio "${MED[payg]}" "${MED[direct]}")"
ADDED=$(( ${P99[payg,1,rate]} - ${P99[direct,1,rate]} ))
echo "at a fixed $HALF req/s (half of payg's median peak): p99 direct $(us "${P99[direct,1,rate]}"), through payg $(us "${P99[payg,1,rate]}"); added $(us "$ADDED") (target <= 1 ms: $([ "$ADDED" -le 1000 ] && echo met || echo "NOT met")); p50 direct $(us "${P50[direct,1,rate]}"), payg $(us "${P50[payg,1,rate]}"); exact: ${EXACT[payg,1,rate]}"
DRIFT=$(( (RSS_MAX - RSS_BEFORE) / 1024 ))
echo "streaming ${DOWNLOAD_MIB} MiB through payg (curl at 50 MB/s, $SAMPLES samples): RSS before $((RSS_BEFORE / 1024)) MB, min $((RSS_MIN / 1024)) MB, max $((RSS_MAX / 1024)) MB, after $((RSS_AFTER / 1024)) MB; growth $DRIFT MB (target within 10 MB: $([ "$DRIFT" -le 10 ] && echo met || echo "NOT met"))"
echo
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -sr); load average before/after: $LOADAVG_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings: $CONNECTIONS connections, ${DURATION}s measured after ${WARMUP}s warm-up, ROUNDS=$ROUNDS (medians), $USERS users;" \
  "upstream nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') with 1 worker, nginx proxy with $WORKERS workers, payg PAYG_WORKERS=$WORKERS," \
  "rate limit $RATE_LIMIT_HIGH/min when on, RUST_LOG=warn; loadgen $LOADGEN_THREADS threads on the same machine"
if [ "$FAILED" -ne 0 ]; then
  echo "bench: FAILED: some counts were not exact, a request failed, or the download was incomplete" >&2
  exit 1
fi
