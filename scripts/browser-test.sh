#!/usr/bin/env bash
# The web console in real Chromium: starts payg (the release binary unless
# PAYG is set) on a fresh database, creates a finance and an admin account,
# and runs tests/browser/console.test.mjs (Playwright, playwright-core,
# pointed at Debian's chromium). Installs chromium (apt-get), Node.js and
# npm when missing, and the test's npm packages every time (npm ci).
# Screenshots of every page at 375 and 1280 px go to target/screenshots/.
#
#   ./scripts/browser-test.sh            # after `cargo build --release`
#   PAYG=target/debug/payg ./scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PAYG=${PAYG:-target/release/payg}
SCREENSHOTS=${SCREENSHOTS:-$PWD/target/screenshots}
DB="payg_browser_$$"
DB_URL="postgres://postgres@127.0.0.1:5432/$DB"
LOG="$PWD/target/payg-browser-server.log"
SERVER_PID=""

die() { echo "browser-test: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
random_hex() { od -An -N12 -tx1 /dev/urandom | tr -d ' \n'; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    psql -w -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  fi
  if [ "$rc" -ne 0 ] && [ -f "$LOG" ]; then
    echo "---- last 50 lines of the server log ($LOG) ----"
    tail -n 50 "$LOG"
  fi
  exit "$rc"
}
trap cleanup EXIT

[ -x "$PAYG" ] || die "$PAYG is missing: run cargo build --release first (or set PAYG)"
command -v chromium >/dev/null 2>&1 || { echo "browser-test: installing chromium"; apt_install chromium; }
command -v npm >/dev/null 2>&1 || { echo "browser-test: installing nodejs and npm"; apt_install nodejs npm; }
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
./scripts/services.sh >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER_ENV=(
  PAYG_BIND="127.0.0.1:$PORT"
  PAYG_METRICS_BIND="127.0.0.1:$METRICS_PORT"
  DATABASE_URL="$DB_URL"
  REDIS_URL="redis://127.0.0.1:6379"
  PAYG_REDIS_PREFIX="payg_browser_$$:"
  JWT_SECRET="browser-test-jwt-secret-$(random_hex)"
  # The test closes last month itself; the scheduler must not first.
  PAYG_CLOSE_GRACE="876000h"
  PAYG_METER_FLUSH_MS=50
  # The test seeds last month in UTC and reads dates in it.
  PAYG_BILLING_TZ=UTC
  RUST_LOG="${RUST_LOG:-info}"
)
mkdir -p "$(dirname "$LOG")" "$SCREENSHOTS"
env "${SERVER_ENV[@]}" "$PAYG" serve >"$LOG" 2>&1 </dev/null &
SERVER_PID=$!
ready=0
for _ in $(seq 1 120); do
  if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || die "payg exited before answering"
  sleep 0.5
done
[ "$ready" -eq 1 ] || die "payg did not answer /healthz within 60 s"

FINANCE_EMAIL="finance-$$@example.com"
FINANCE_PASSWORD="finance-$(random_hex)"
ADMIN_EMAIL="admin-$$@example.com"
ADMIN_PASSWORD="admin-$(random_hex)"
env "${SERVER_ENV[@]}" RUST_LOG=warn PAYG_PASSWORD="$FINANCE_PASSWORD" "$PAYG" user create --email "$FINANCE_EMAIL" --role finance </dev/null
env "${SERVER_ENV[@]}" RUST_LOG=warn PAYG_PASSWORD="$ADMIN_PASSWORD" "$PAYG" user create --email "$ADMIN_EMAIL" --role admin </dev/null

PAYG_URL="http://127.0.0.1:$PORT" PAYG_DATABASE_URL="$DB_URL" \
  FINANCE_EMAIL="$FINANCE_EMAIL" FINANCE_PASSWORD="$FINANCE_PASSWORD" \
  ADMIN_EMAIL="$ADMIN_EMAIL" ADMIN_PASSWORD="$ADMIN_PASSWORD" \
  SCREENSHOTS="$SCREENSHOTS" CHROMIUM="$(command -v chromium)" \
  node --test --test-concurrency=1 --test-reporter=spec tests/browser/console.test.mjs
echo "browser-test: passed; screenshots in $SCREENSHOTS"
