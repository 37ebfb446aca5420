# Shared by bench/run.sh and bench/gateway.sh (sourced, not run): the
# toolchain on PATH, the settings both take, and the helpers both use.
# Expects `set -euo pipefail`, the repository root as the working
# directory (as ROOT), the caller's SERVER_PID (the server under test, or
# "") and CREATED_DBS (the databases to drop at exit).

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-2}
LOADGEN_THREADS=${LOADGEN_THREADS:-2}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

psql_on() { # database, psql args…
  local db=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -d "$PG_URL/$db" "$@"
}

stop_server() { # Sends SIGTERM, waits (≤ 60 s, then SIGKILL); returns the exit status.
  local pid=$SERVER_PID rc=0 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "server $pid did not exit within 60 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  SERVER_PID=""
  return "$rc"
}

# Drops every database named in CREATED_DBS (at exit).
drop_created_databases() {
  local db
  for db in ${CREATED_DBS[@]+"${CREATED_DBS[@]}"}; do
    psql_on postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "bench: could not drop database $db" >&2
  done
}

# Services up, then the release server and load generator: sets PAYG and LOADGEN.
build_bench_binaries() {
  ./scripts/services.sh >&2
  log "building (cargo build --release --example loadgen --bin payg)"
  cargo build --release --example loadgen --bin payg >&2
  # Where cargo put them: CARGO_TARGET_DIR when set (a worktree sharing a
  # warm target directory), the repository's target/ otherwise.
  PAYG="${CARGO_TARGET_DIR:-$ROOT/target}/release/payg"
  LOADGEN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen"
  { [ -x "$PAYG" ] && [ -x "$LOADGEN" ]; } || die "build outputs missing"
}

us() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2f ms", u / 1000; else printf "%d µs", u }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 }
  END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%d\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Starts a redis-server of the script's own on 127.0.0.1:$1 (nothing kept on
# disk, log in $2) and waits until it answers: sets REDIS_PID.
start_private_redis() { # port, log file
  command -v redis-server >/dev/null 2>&1 || die "redis-server is required"
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no >"$2" 2>&1 &
  REDIS_PID=$!
  local i
  for ((i = 0; i < 50; i++)); do
    redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "the redis-server on port $1 did not start"
}
