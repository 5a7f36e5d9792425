#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis tests start real redis-server processes (and a cluster through redis-cli).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "installing redis-server for the Redis tests" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # Debian starts a system-wide server on 6379; the tests start their own.
fi

# cargo-nextest runs each test in its own process; fall back to cargo test where it is missing.
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
cargo test --workspace --doc

# Model-check the memory store's locking with loom (its own cfg, so its own target directory).
RUSTFLAGS="--cfg sluice_loom" CARGO_TARGET_DIR=target/loom \
  cargo test --profile loom -p sluice-store --test loom
