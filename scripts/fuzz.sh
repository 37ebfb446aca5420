#!/usr/bin/env bash
# Fuzzes a running payg with schemathesis, driven by the server's own
# OpenAPI spec (GET /api/v1/openapi.json), as every kind of caller:
#
#   scripts/fuzz.sh http://127.0.0.1:8080
#
# Runs, in order: anonymous; the metered tools as a consumer with a JWT and
# with an API key; everything else as that consumer (JWT, then API key), as
# a finance user and as an admin. Every check schemathesis has is on (no
# 5xx, status codes, content types, headers and bodies as the spec says, bad
# input refused, good input accepted, auth not ignored, …) except where
# schemathesis.toml says why not. Exits non-zero on any failure.
#
# The accounts must exist (e.g. created with `payg user create`); their
# credentials come from the environment:
#   FUZZ_CONSUMER_EMAIL FUZZ_CONSUMER_PASSWORD
#   FUZZ_FINANCE_EMAIL  FUZZ_FINANCE_PASSWORD
#   FUZZ_ADMIN_EMAIL    FUZZ_ADMIN_PASSWORD
# Optional: FUZZ_MAX_EXAMPLES (default 30 per operation and phase),
# FUZZ_SEED (reproduce a run), FUZZ_REPORT_DIR (default target/fuzz).
#
# schemathesis comes from PyPI (pinned below); it is installed with pip for
# the current user when missing. The runs touch the server's data the way a
# client could (they register accounts, create keys and catalog entries, close
# past months): point it at a throwaway database.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
BASE_URL=${1:?usage: scripts/fuzz.sh BASE_URL (e.g. http://127.0.0.1:8080)}
BASE_URL=${BASE_URL%/}
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-30}
REPORT_DIR=${FUZZ_REPORT_DIR:-target/fuzz}

log() { echo "fuzz: $*" >&2; }
die() { echo "fuzz: error: $*" >&2; exit 1; }

for v in FUZZ_CONSUMER_EMAIL FUZZ_CONSUMER_PASSWORD FUZZ_FINANCE_EMAIL FUZZ_FINANCE_PASSWORD \
  FUZZ_ADMIN_EMAIL FUZZ_ADMIN_PASSWORD; do
  [ -n "${!v:-}" ] || die "$v is not set"
done
command -v python3 >/dev/null 2>&1 || die "python3 is required (schemathesis is a Python tool)"

# ------------------------------------------------------------------ schemathesis
ST=(python3 -m schemathesis.cli)
installed=$(python3 -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [ "$installed" != "$SCHEMATHESIS_VERSION" ]; then
  log "installing schemathesis==$SCHEMATHESIS_VERSION from PyPI (found: ${installed:-none})"
  python3 -m pip install --quiet --disable-pip-version-check --user "schemathesis==$SCHEMATHESIS_VERSION" ||
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"${ST[@]}" --version >/dev/null || die "schemathesis does not run"

# ------------------------------------------------------------------ credentials
json_field() { # field name; reads JSON on stdin
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
login() { # email password → access token
  local body
  body=$(python3 -c 'import json, sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' "$1" "$2")
  curl -fsS -X POST "$BASE_URL/api/v1/auth/login" -H 'Content-Type: application/json' --data-binary @- <<<"$body" |
    json_field access_token
}
CONSUMER_TOKEN=$(login "$FUZZ_CONSUMER_EMAIL" "$FUZZ_CONSUMER_PASSWORD") || die "consumer login failed"
FINANCE_TOKEN=$(login "$FUZZ_FINANCE_EMAIL" "$FUZZ_FINANCE_PASSWORD") || die "finance login failed"
ADMIN_TOKEN=$(login "$FUZZ_ADMIN_EMAIL" "$FUZZ_ADMIN_PASSWORD") || die "admin login failed"
CONSUMER_KEY=$(curl -fsS -X POST "$BASE_URL/api/v1/api-keys" -H "Authorization: Bearer $CONSUMER_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"schemathesis"}' | json_field key) || die "creating an API key failed"

# ------------------------------------------------------------------ runs
mkdir -p "$REPORT_DIR"
failed=()
run() { # name, extra schemathesis arguments…
  local name=$1
  shift
  log "run '$name' (max $MAX_EXAMPLES examples per operation)"
  # No --checks: every check is on by default, and a CLI list would override
  # the per-operation settings in schemathesis.toml.
  # One worker: with two, hypothesis parses lambda sources with `ast` from two
  # threads, which CPython 3.11 (this machine's) can fail on ("AST
  # constructor recursion depth mismatch"), an error of the tool, not of payg.
  local args=(run "$BASE_URL/api/v1/openapi.json" --max-examples "$MAX_EXAMPLES" --workers 1
    --no-shrink --report junit --report-junit-path "$REPORT_DIR/$name.xml")
  [ -z "${FUZZ_SEED:-}" ] || args+=(--seed "$FUZZ_SEED")
  if ! "${ST[@]}" "${args[@]}" "$@"; then
    failed+=("$name")
  fi
}
# Authenticated runs leave out logout: it would end the session the rest of
# the run uses (the anonymous run covers it).
# The admin run comes last: its stateful phase follows the ids GET
# /admin/users returns into PATCH /admin/users/{id}, so it changes other
# users' roles and statuses (the consumer and finance accounts above
# included). Its own account cannot be demoted or suspended (409 own_account).
# The metered tools are fuzzed first, and only then: the runs after them
# may cap their own caller (PUT /billing/cap), make a user prepaid-only
# (PUT /finance/users/{id}/cap) or close months into overdue invoices, and
# a capped, prepaid-only or blocked caller is refused 402 whatever it sends,
# before its request is read. Fuzzing the tools first keeps every check on
# for them.
AUTHED=(--exclude-path /api/v1/auth/logout)
TOOLS=(--include-path-regex '^/api/v1/tools/')
NOT_TOOLS=(--exclude-path-regex '^/api/v1/tools/')
run anonymous
run tools-jwt "${TOOLS[@]}" -H "Authorization: Bearer $CONSUMER_TOKEN"
run tools-api-key "${TOOLS[@]}" -H "X-API-Key: $CONSUMER_KEY"
run consumer-jwt "${AUTHED[@]}" "${NOT_TOOLS[@]}" -H "Authorization: Bearer $CONSUMER_TOKEN"
run consumer-api-key "${AUTHED[@]}" "${NOT_TOOLS[@]}" -H "X-API-Key: $CONSUMER_KEY"
run finance "${AUTHED[@]}" "${NOT_TOOLS[@]}" -H "Authorization: Bearer $FINANCE_TOKEN"
run admin "${AUTHED[@]}" "${NOT_TOOLS[@]}" -H "Authorization: Bearer $ADMIN_TOKEN"

if [ "${#failed[@]}" -gt 0 ]; then
  die "schemathesis found failures in: ${failed[*]} (JUnit reports in $REPORT_DIR)"
fi
log "all runs passed (JUnit reports in $REPORT_DIR)"
