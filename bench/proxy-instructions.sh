#!/usr/bin/env bash
# User-space instructions per proxied request, a measure the shared machine's noise does not move,
# for the gateway and, as its baseline, nginx (limit_req + proxy_pass, bench/load.sh's
# configuration) in front of the same built-in echo upstream: callgrind's totals for two runs of
# each (N1 and N2 requests over one keep-alive connection), difference / (N2 - N1). Each is
# measured with its access log off (the gateway at RUST_LOG=warn, nginx with access_log off, as
# bench/load.sh runs them) and on (one line per request, to a file).
#
# Only the gateway's serving threads count: the main thread's start-up (the clock's calibration
# loop among it) varies by millions of instructions from run to run. nginx runs as one process
# (master_process off), which serves and is counted whole.
#
# Usage: bench/proxy-instructions.sh [BINARY] [PORT]   (compare two binaries by running it twice)
#   SERVERS=sluice LOGS=off bench/proxy-instructions.sh BINARY   measures only that (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/nginx.sh
BIN=${1:-target/release/sluice}; PORT=${2:-19400}; ECHO=$((PORT + 1)); N1=500; N2=2500
for pair in valgrind:valgrind curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || { echo "needs ${pair#*:} (apt-get install -y ${pair#*:})" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p sluice" >&2; exit 1; }
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d)
mkdir -p "$work/logs"
RUST_LOG=warn "$BIN" echo --listen "127.0.0.1:$ECHO" >/dev/null 2>&1 & echo_pid=$!
trap 'kill $echo_pid 2>/dev/null; rm -rf "$work"' EXIT

# requests N: N requests over one connection, once the server answers.
requests() {
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.3; done
  curl -s -o /dev/null -H 'x-user: u1' "http://127.0.0.1:$PORT/items?[1-$1]"
}

# sluice N LOG: the gateway's serving threads' instructions for N requests, LOG on or off.
sluice() {
  local n=$1 level=warn out="$work/cg.sluice.$2.$1"
  [ "$2" = on ] && level=info
  RUST_LOG=$level valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
    "$BIN" serve --policy bench/policy.yaml --store memory --listen "127.0.0.1:$PORT" \
    --upstream "http://127.0.0.1:$ECHO" >/dev/null 2>"$work/logs/sluice.log" &
  local gateway=$!
  requests "$n"
  kill -INT $gateway; wait $gateway || true
  # Thread 1 is the main thread; the others serve.
  for file in "$out"-*; do
    [ "${file##*-}" = 01 ] || awk '/^summary:|^totals:/ {print $2; exit}' "$file"
  done | awk '{ sum += $1 } END { print sum }'
}

# nginx N LOG: nginx's instructions for N requests, LOG on or off.
nginx() {
  local n=$1 log=off out="$work/cg.nginx.$2.$1"
  [ "$2" = on ] && log="$work/logs/access.log"
  nginx_conf "$work/nginx.conf" "$work" "daemon off; master_process off; worker_processes 1;" \
    "127.0.0.1:$PORT" "127.0.0.1:$ECHO" "$log"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$NGINX_BIN" -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
  local server=$!
  requests "$n"
  kill -QUIT $server; wait $server || true
  awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}

declare -A PER
for server in ${SERVERS:-sluice nginx}; do
  if [ $server = nginx ] && [ ! -x "$NGINX_BIN" ]; then
    echo "no nginx (apt-get install -y nginx-light): its baseline is left out" >&2
    continue
  fi
  for log in ${LOGS:-off on}; do
    a=$($server $N1 $log); b=$($server $N2 $log)
    PER[$server.$log]=$(( (b - a) / (N2 - N1) ))
  done
done
for log in ${LOGS:-off on}; do
  line="access log $log: $BIN ${PER[sluice.$log]} user-space instructions per proxied request"
  if [ -n "${PER[nginx.$log]:-}" ]; then
    line+=", nginx ${PER[nginx.$log]} ($(awk -v a="${PER[sluice.$log]}" -v b="${PER[nginx.$log]}" 'BEGIN { printf "%.2f", a / b }')x)"
  fi
  echo "$line"
done
