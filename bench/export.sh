#!/usr/bin/env bash
# payg finance-export benchmark (a benchmark, not a test).
#
#   bench/export.sh                   # 100,000 users × 5 APIs, 3 rounds (~3 min)
#   USERS=10000 ROUNDS=1 bench/export.sh   # quick run
#
# In a fresh database it seeds USERS users with usage on 5 APIs in a past
# month (straight in SQL), closes that month with `payg billing close`
# (timed), then times `payg invoices export --format csv` and `--format json`
# with stdout to /dev/null, ROUNDS times each, and prints rows per second
# (median round) and the export process's peak RSS (largest round). One
# untimed run per format is checked first: exit status and row count. The
# database is dropped at exit, whatever happened.
#
# Settings (environment):
#   USERS=100000          users seeded, each with usage on every one of the APIS
#   APIS=5                APIs per user (payg's migrations seed 6)
#   ROUNDS=3              timed runs per format
#   PERIOD=2025-06        the past month seeded, closed and exported
#   TIMEOUT=600           seconds any one payg command may take before the run fails
#   TARGET_LINES_PER_SEC=50000   the figure the summary compares against
#   CARGO_TARGET_DIR      where the release binary is built (default target/)
#   PG_URL=postgres://postgres@127.0.0.1:5432   server (trust auth) for the bench database
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SERVER_PID=""
CREATED_DBS=()
# shellcheck source=bench/common.sh
. bench/common.sh

USERS=${USERS:-100000}
APIS=${APIS:-5}
PERIOD=${PERIOD:-2025-06}
TIMEOUT=${TIMEOUT:-600}
TARGET_LINES_PER_SEC=${TARGET_LINES_PER_SEC:-50000}
for v in USERS APIS ROUNDS TIMEOUT TARGET_LINES_PER_SEC; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "$v must be a positive whole number (got ${!v@Q})"
done
[[ $PERIOD =~ ^[0-9]{4}-(0[1-9]|1[0-2])$ ]] || die "PERIOD must be YYYY-MM (got ${PERIOD@Q})"
[ "$PERIOD" \< "$(date -u +%Y-%m)" ] || die "PERIOD must be a past month"
command -v psql >/dev/null 2>&1 || die "psql is required"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
if [ ! -x /usr/bin/time ]; then
  log "installing GNU time (for the peak RSS)"
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
  fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/payg-bench-export.XXXXXX")
DB="payg_bench_export_$$"
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  drop_created_databases
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

./scripts/services.sh >&2
log "building (cargo build --release --bin payg)"
cargo build --release --bin payg >&2
PAYG="${CARGO_TARGET_DIR:-$ROOT/target}/release/payg"
[ -x "$PAYG" ] || die "build output missing: $PAYG"

# Every payg command runs from $WORK (no developer .env), bounded in time.
JWT_SECRET_BENCH=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
payg() {
  (cd "$WORK" && exec env DATABASE_URL="$PG_URL/$DB" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
    PAYG_BILLING_TZ=UTC timeout "$TIMEOUT" "$PAYG" "$@")
}
now_ns() { date +%s%N; }
seconds() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }

# ------------------------------------------------------------------ setup

psql_on postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
CREATED_DBS+=("$DB")
payg migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; die "payg migrate failed"; }

log "seeding $USERS users × $APIS APIs of usage in $PERIOD"
t0=$(now_ns)
# Billing names carry a comma, a quote, or a formula lead now and then, so
# the quoting and neutralising paths run too (never a line break: a CSV row
# stays one line, which is what the row check below counts).
psql_on "$DB" <<SQL
BEGIN;
INSERT INTO users (id, email, password_hash, name, company, country, tax_id)
SELECT md5('bench' || g)::uuid, 'bench-' || g || '@bench.invalid',
       '\$argon2id\$v=19\$m=19456,t=2,p=1\$bench\$not-a-real-hash',
       CASE g % 10 WHEN 1 THEN 'Comma, "Quoted" & Co ' || g
                   WHEN 2 THEN '=Formula ' || g
                   ELSE 'Bench User ' || g END,
       CASE WHEN g % 3 = 0 THEN 'Bench Ltd' END, 'GB', 'GB' || g
FROM generate_series(1, $USERS) AS g;
INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls)
SELECT md5('bench' || g)::uuid, a.id, DATE '$PERIOD-01', 1000 + (g * a.id) % 5000, g % 7
FROM generate_series(1, $USERS) AS g
CROSS JOIN (SELECT id FROM apis ORDER BY id LIMIT $APIS) AS a;
-- The same calls under the price version in force at the month's start, as
-- a flush writes them (statements and invoices price these rows).
INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls)
SELECT r.user_id, r.api_id, r.period,
       coalesce((SELECT p.id FROM prices p
                 WHERE p.api_id = r.api_id AND p.effective_from <= r.period::timestamp AT TIME ZONE 'UTC'
                 ORDER BY p.effective_from DESC LIMIT 1), 0),
       r.calls, r.failed_calls
FROM usage_records r WHERE r.period = DATE '$PERIOD-01';
COMMIT;
ANALYZE;
SQL
log "seeded in $(seconds $(($(now_ns) - t0))) s"

t0=$(now_ns)
payg billing close --period "$PERIOD" >"$WORK/close.log" 2>&1 || { cat "$WORK/close.log" >&2; die "payg billing close failed"; }
CLOSE_S=$(seconds $(($(now_ns) - t0)))
ROWS=$(psql_on "$DB" -tAc "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
  WHERE i.period = DATE '$PERIOD-01'")
INVOICES=$(psql_on "$DB" -tAc "SELECT count(*) FROM invoices WHERE period = DATE '$PERIOD-01'")
[ "$ROWS" -gt 0 ] || die "the close issued no invoice lines ($(cat "$WORK/close.log"))"
psql_on "$DB" -c "VACUUM ANALYZE" >/dev/null
log "close: $INVOICES invoices, $ROWS lines in $CLOSE_S s"

# ------------------------------------------------------------------ check

# One untimed run per format: it must succeed and hold one row per line.
payg invoices export --period "$PERIOD" --format csv >"$WORK/export.csv" 2>"$WORK/export.log" ||
  { cat "$WORK/export.log" >&2; die "the csv export failed"; }
csv_lines=$(wc -l <"$WORK/export.csv")
[ "$csv_lines" -eq $((ROWS + 1)) ] || die "the csv export has $csv_lines lines, expected $ROWS rows + the header"
rm -f "$WORK/export.csv"
payg invoices export --period "$PERIOD" --format json >"$WORK/export.json" 2>"$WORK/export.log" ||
  { cat "$WORK/export.log" >&2; die "the json export failed"; }
json_rows=$(grep -o '"invoice_number":' "$WORK/export.json" | wc -l)
[ "$json_rows" -eq "$ROWS" ] || die "the json export has $json_rows rows, expected $ROWS"
rm -f "$WORK/export.json"

# ------------------------------------------------------------------ timed runs

declare -A SUMMARY
for format in csv json; do
  rates=() rss_max=0 secs=()
  for ((round = 1; round <= ROUNDS; round++)); do
    t0=$(now_ns)
    (cd "$WORK" && exec env DATABASE_URL="$PG_URL/$DB" JWT_SECRET="$JWT_SECRET_BENCH" RUST_LOG=warn \
      PAYG_BILLING_TZ=UTC /usr/bin/time -f '%M' -o "$WORK/time.txt" \
      timeout "$TIMEOUT" "$PAYG" invoices export --period "$PERIOD" --format "$format") \
      >/dev/null 2>"$WORK/export.log" || { cat "$WORK/export.log" >&2; die "$format export round $round failed"; }
    ns=$(($(now_ns) - t0))
    rss_kb=$(tail -n 1 "$WORK/time.txt")
    rate=$(awk -v r="$ROWS" -v ns="$ns" 'BEGIN { printf "%d", r / (ns / 1e9) }')
    rates+=("$rate") secs+=("$(seconds "$ns")")
    [ "$rss_kb" -le "$rss_max" ] || rss_max=$rss_kb
    log "$format #$round: $ROWS rows in $(seconds "$ns") s = $(thousands "$rate") rows/s, peak RSS $((rss_kb / 1024)) MB"
  done
  med=$(median "${rates[@]}")
  med_s=$(awk -v r="$ROWS" -v m="$med" 'BEGIN { printf "%.1f", r / m }')
  unit=$([ "$format" = csv ] && echo lines || echo rows)
  SUMMARY[$format]="export $format: $ROWS $unit in $med_s s = $(thousands "$med") $unit/s, peak RSS $((rss_max / 1024)) MB (target >= $((TARGET_LINES_PER_SEC / 1000))k $unit/s: $(
    [ "$med" -ge "$TARGET_LINES_PER_SEC" ] && echo met || echo NOT met))"
done

# ------------------------------------------------------------------ report

echo
echo "close $PERIOD: $INVOICES invoices, $ROWS lines in $CLOSE_S s"
echo "${SUMMARY[csv]}"
echo "${SUMMARY[json]}"
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo "($USERS users × $APIS APIs; median of $ROUNDS rounds, stdout to /dev/null, peak RSS the largest round's;" \
  "$(nproc) CPUs, ${cpu:-unknown CPU}; $(psql_on postgres -tAc 'SHOW server_version' | head -1 | sed 's/^/PostgreSQL /'))"
