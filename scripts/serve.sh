#!/usr/bin/env bash
# Run payg locally for development: brings up PostgreSQL and Redis, then
# builds and starts the server. Extra arguments go to `payg serve`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

./scripts/services.sh

if [ -z "${JWT_SECRET:-}" ]; then
  export JWT_SECRET=dev-only-secret-change-me-0123456789abcdef
  echo "serve.sh: WARNING: JWT_SECRET not set; using a development-only secret. Never use it in production." >&2
fi

exec cargo run --release --locked -- serve "$@"
