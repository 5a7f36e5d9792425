#!/usr/bin/env bash
# User-space instructions per proxied request, a measure the shared machine's noise does not move:
# callgrind's totals for two runs of the gateway (N1 and N2 requests over one keep-alive
# connection, to the built-in echo upstream), difference / (N2 - N1). Only the serving threads
# count: the main thread's start-up (the clock's calibration loop among it) varies by millions of
# instructions from run to run.
# Usage: bench/proxy-instructions.sh [BINARY] [PORT]   (compare two binaries by running it twice)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/sluice}; PORT=${2:-19400}; ECHO=$((PORT + 1)); N1=500; N2=2500
for pair in valgrind:valgrind curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || { echo "needs ${pair#*:} (apt-get install -y ${pair#*:})" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p sluice" >&2; exit 1; }
work=$(mktemp -d)
"$BIN" echo --listen "127.0.0.1:$ECHO" >/dev/null 2>&1 & echo_pid=$!
trap 'kill $echo_pid 2>/dev/null; rm -rf "$work"' EXIT
total() {
  local n=$1
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.$n" "$BIN" serve --policy bench/policy.yaml \
    --store memory --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$ECHO" >/dev/null 2>&1 &
  local gateway=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.3; done
  curl -s -o /dev/null -H 'x-user: u1' "http://127.0.0.1:$PORT/items?[1-$n]"
  kill -INT $gateway; wait $gateway || true
  # Thread 1 is the main thread; the others serve.
  for file in "$work/cg.$n"-*; do
    [ "${file##*-}" = 01 ] || awk '/^summary:|^totals:/ {print $2; exit}' "$file"
  done | awk '{ sum += $1 } END { print sum }'
}
a=$(total $N1); b=$(total $N2)
echo "$BIN: $(( (b - a) / (N2 - N1) )) user-space instructions per proxied request"
