#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

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
