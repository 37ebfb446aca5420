#!/usr/bin/env bash
# Replays the three high findings of the security review (issue 11) against
# a real payg: a flood of logins with unknown emails (argon2 work for
# nobody) while
#   - a locked account keeps retrying its *correct* password,
#   - a logged-out access token keeps retrying GET /api/v1/me,
#   - a known user keeps making metered calls.
# Prints the server's peak resident memory, how many flood logins were
# verified (answered 401 after argon2) or shed (503 busy), how many
# refused-should-be requests got through (lockout and deny-list bypasses),
# and how many metered calls were served. Exits non-zero when a target is
# missed: peak memory under 500 MB, 0 bypasses, metered calls served.
#
#   scripts/replay-security.sh                 # builds, starts its own server
#   PAYG=target/release/payg DURATION=20 FLOOD=200 scripts/replay-security.sh
#
# The server gets its own database and Redis prefix, the default password
# pool (2 threads, 16 waiting) and — the worst case — the per-address
# buckets switched off (PAYG_CLIENT_AUTH_PER_MINUTE=0): every flood login
# comes from 127.0.0.1 here, where a real flood would come from many
# addresses; with the buckets on, all but 20 would be refused at once.
#
# Environment: PAYG (binary; default target/release/payg, built if missing),
# DURATION=15 (seconds of flood), FLOOD=200 (parallel flood clients),
# PG_URL=postgres://postgres@127.0.0.1:5432, REDIS_URL=redis://127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PAYG="${PAYG:-target/release/payg}"
DURATION="${DURATION:-15}"
FLOOD="${FLOOD:-200}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

if [ ! -x "$PAYG" ]; then
  cargo build --release --locked
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
db="payg_replay_$$"
dir=$(mktemp -d)
SERVER_ENV=(
  DATABASE_URL="$PG_URL/$db"
  REDIS_URL="$REDIS_URL"
  PAYG_REDIS_PREFIX="payg-replay-$$:"
  JWT_SECRET="replay-only-jwt-secret-0123456789abcdef"
  PAYG_BIND="127.0.0.1:$port"
  PAYG_METRICS_BIND="127.0.0.1:0"
  PAYG_CLIENT_AUTH_PER_MINUTE=0
  RUST_LOG=warn
)
cleanup() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

env "${SERVER_ENV[@]}" "$PAYG" migrate >/dev/null
env "${SERVER_ENV[@]}" "$PAYG" serve --no-migrate >"$dir/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || {
  cat "$dir/server.log" >&2
  echo "replay-security: the server did not start" >&2
  exit 1
}

python3 - "$port" "$SERVER_PID" "$DURATION" "$FLOOD" <<'PY'
import http.client, json, sys, threading, time, uuid

port, pid, duration, flood = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
PASSWORD = "correct horse battery"

def request(conn, method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    res = conn.getresponse()
    data = res.read()
    return res.status, data

def connection():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

def call(method, path, body=None, token=None):
    c = connection()
    try:
        return request(c, method, path, body, token)
    finally:
        c.close()

def status_kb(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def register(email):
    s, d = call("POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD, "name": "Replay"})
    assert s == 201, (s, d)

def login(email, password=PASSWORD):
    return call("POST", "/api/v1/auth/login", {"email": email, "password": password})

tag = uuid.uuid4().hex[:8]
locked, logged_out, metered = (f"{who}-{tag}@example.com" for who in ("locked", "loggedout", "metered"))
for email in (locked, logged_out, metered):
    register(email)
# Lock the account: 10 failures per 15 minutes from one address.
for _ in range(10):
    assert login(locked, "wrong password!")[0] == 401
assert login(locked)[0] == 429, "the account is locked before the flood"
s, d = login(logged_out)
dead_token = json.loads(d)["access_token"]
assert call("POST", "/api/v1/auth/logout", token=dead_token)[0] == 204
assert call("GET", "/api/v1/me", token=dead_token)[0] == 401, "logged out before the flood"
metered_token = json.loads(login(metered)[1])["access_token"]

idle_kb = status_kb("VmRSS")
stop = threading.Event()
lock = threading.Lock()
tally = {}

def count(key, n=1):
    with lock:
        tally[key] = tally.get(key, 0) + n

def loop(name, send):
    conn = connection()
    while not stop.is_set():
        try:
            status, _ = send(conn)
        except (OSError, http.client.HTTPException):
            count(f"{name} transport error")
            conn.close()
            conn = connection()
            continue
        count(f"{name} {status}")
    conn.close()

def flood_login(conn):
    email = f"nobody-{uuid.uuid4().hex}@example.com"
    return request(conn, "POST", "/api/v1/auth/login", {"email": email, "password": "not the password"})

metered_latencies = []
def metered_call(conn):
    started = time.monotonic()
    result = request(conn, "GET", "/api/v1/tools/uuid", token=metered_token)
    with lock:
        metered_latencies.append(time.monotonic() - started)
    return result

threads = [threading.Thread(target=loop, args=("flood", flood_login)) for _ in range(flood)]
threads += [
    threading.Thread(target=loop, args=("locked login", lambda c: request(
        c, "POST", "/api/v1/auth/login", {"email": locked, "password": PASSWORD})))
    for _ in range(2)
]
threads += [
    threading.Thread(target=loop, args=("logged-out /me", lambda c: request(c, "GET", "/api/v1/me", token=dead_token)))
    for _ in range(2)
]
threads.append(threading.Thread(target=loop, args=("metered", metered_call)))
peak_sampled = idle_kb
for t in threads:
    t.start()
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    peak_sampled = max(peak_sampled, status_kb("VmRSS"))
    time.sleep(0.1)
stop.set()
for t in threads:
    t.join()
peak_kb = max(status_kb("VmHWM"), peak_sampled)

verified = tally.get("flood 401", 0)
busy = tally.get("flood 503", 0)
flood_other = {k: v for k, v in tally.items() if k.startswith("flood ") and k not in ("flood 401", "flood 503")}
lockout_bypass = tally.get("locked login 200", 0)
deny_bypass = tally.get("logged-out /me 200", 0)
served = tally.get("metered 200", 0)
lat = sorted(metered_latencies)
p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")

print(f"flood: {flood} parallel clients, unknown emails, {duration:.0f} s (per-address buckets off: the worst case)")
print(f"server resident memory: before the flood {idle_kb / 1024:.0f} MB, peak {peak_kb / 1024:.0f} MB (target < 500 MB)")
print(f"flood logins: {verified} verified (401 after argon2), {busy} shed (503 busy), other: {flood_other or 'none'}")
print(f"locked account, correct password: {lockout_bypass} accepted (bypasses; target 0); answers: "
      + ", ".join(f"{k.split()[-1]}×{v}" for k, v in tally.items() if k.startswith("locked login")))
print(f"logged-out token on /me: {deny_bypass} accepted (bypasses; target 0); answers: "
      + ", ".join(f"{k.split()[-1]}×{v}" for k, v in tally.items() if k.startswith("logged-out /me")))
print(f"known user's metered calls: {served} served, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
      "(429 = the user's own rate limit, 600 a minute by default); answers: "
      + ", ".join(f"{k.split()[-1]}×{v}" for k, v in tally.items() if k.startswith("metered")))
failed = []
if peak_kb >= 500 * 1024:
    failed.append("peak memory")
if lockout_bypass or deny_bypass:
    failed.append("bypasses")
if served == 0:
    failed.append("metered calls not served")
if verified == 0:
    failed.append("no flood login was verified at all")
print("result: " + ("PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"))
sys.exit(1 if failed else 0)
PY
