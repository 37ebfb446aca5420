#!/usr/bin/env bash
# The project's one test command: brings up PostgreSQL and Redis, then runs
# every test target. Extra arguments go to `cargo test`, e.g.
#   ./scripts/test.sh -- --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

./scripts/services.sh

# The webhook tests check payg's signatures with an independent
# implementation of the Standard Webhooks spec (npm: standardwebhooks).
if ! command -v npm >/dev/null 2>&1; then
  echo "test: installing nodejs and npm"
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd tests/webhooks && npm ci --no-audit --no-fund --loglevel=error)

exec cargo test --locked --all-targets "$@"
