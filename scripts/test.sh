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
exec cargo test --locked --all-targets "$@"
