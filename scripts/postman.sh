#!/usr/bin/env bash
# Run the Postman collection against a running payg server with newman.
#   scripts/postman.sh [BASE_URL [NEWMAN_ARGS...]]   (default http://127.0.0.1:8080)
# Arguments after BASE_URL go to `newman run` as they are, e.g. the billing
# folders' credentials: --env-var adminPassword=... (see .ci/run).
# newman is installed on first use into $PAYG_NEWMAN_DIR
# (default ~/.cache/payg-newman), outside the repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_URL=${1:-http://127.0.0.1:8080}
if [ "$#" -gt 0 ]; then shift; fi
NEWMAN_VERSION=6
NEWMAN_DIR=${PAYG_NEWMAN_DIR:-${HOME:-/tmp}/.cache/payg-newman}

die() { echo "postman.sh: error: $*" >&2; exit 1; }

newman_bin=""
if [ -x "$NEWMAN_DIR/node_modules/.bin/newman" ]; then
  newman_bin="$NEWMAN_DIR/node_modules/.bin/newman"
elif command -v newman >/dev/null 2>&1 && [[ "$(newman --version 2>/dev/null)" == "$NEWMAN_VERSION".* ]]; then
  newman_bin=$(command -v newman)
else
  if ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "npm not found; install Node.js and npm"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "postman.sh: installing newman@$NEWMAN_VERSION into $NEWMAN_DIR"
  mkdir -p "$NEWMAN_DIR"
  npm install --prefix "$NEWMAN_DIR" --no-save --no-audit --no-fund --no-update-notifier \
    --loglevel=error "newman@$NEWMAN_VERSION" </dev/null ||
    die "npm could not install newman@$NEWMAN_VERSION"
  newman_bin="$NEWMAN_DIR/node_modules/.bin/newman"
  [ -x "$newman_bin" ] || die "newman not found at $newman_bin after install"
fi

echo "postman.sh: newman $("$newman_bin" --version) against $BASE_URL"
exec "$newman_bin" run postman/payg.postman_collection.json \
  -e postman/payg.postman_environment.json \
  --env-var "baseUrl=$BASE_URL" \
  --bail \
  --color off \
  --disable-unicode \
  --timeout-request 30000 \
  "$@"
