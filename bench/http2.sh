#!/usr/bin/env bash
# HTTP/2 on the gateway's TLS listener, beside HTTP/1.1 on the same listener in the same run: the
# proxy (bench/policy.yaml, one counter per request) in front of the built-in echo upstream, under
# h2load with 64 connections — HTTP/1.1 (one request at a time per connection), HTTP/2 with one
# stream per connection, and HTTP/2 with 10 — in ROUNDS interleaved rounds. Prints the median
# requests/s and mean and max latency of each, and HTTP/2's requests/s over HTTP/1.1's.
#
#   bash bench/http2.sh
#   ROUNDS=5 DURATION=10 bash bench/http2.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
BASE_PORT=${BASE_PORT:-19200}
ECHO=127.0.0.1:$BASE_PORT
PROXY=127.0.0.1:$((BASE_PORT + 1))
ADMIN=127.0.0.1:$((BASE_PORT + 2))

source bench/common.sh
need h2load:nghttp2-client openssl:openssl

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null
RUST_LOG=warn "$BIN" echo --listen "$ECHO" & pids+=($!)
RUST_LOG=warn "$BIN" serve --policy bench/policy.yaml --store memory --listen "$PROXY" \
  --upstream "http://$ECHO" --admin-listen "$ADMIN" \
  --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" & pids+=($!)
for address in "$ECHO" "$PROXY"; do wait_for "$address"; done

# run NAME FLAGS… — one h2load run; appends its requests/s, mean and max (ms) to NAME's lists.
# Each run is a user of its own, far from the policy's per-user limit.
declare -A RPS MEAN MAX
runs=0
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.2f", n
  }'
}
run() {
  local name=$1 out
  shift
  runs=$((runs + 1))
  out=$(h2load "$@" -D "$DURATION" -c "$CONNECTIONS" -t 1 -H "x-user: run-$runs" \
    "https://localhost:${PROXY#*:}/x" 2>&1)
  if ! grep -q " 0 failed, 0 errored" <<<"$out"; then
    echo "$name: h2load reported failures:" >&2
    echo "$out" >&2
    exit 1
  fi
  RPS[$name]+="$(awk '/^finished/ { print int($4) }' <<<"$out") "
  MEAN[$name]+="$(to_ms "$(awk '/^time for request/ { print $6 }' <<<"$out")") "
  MAX[$name]+="$(to_ms "$(awk '/^time for request/ { print $5 }' <<<"$out")") "
}

names=("HTTP/1.1" "HTTP/2, 1 stream" "HTTP/2, 10 streams")
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run "HTTP/1.1" --h1 -m 1
  run "HTTP/2, 1 stream" -m 1
  run "HTTP/2, 10 streams" -m 10
done

echo "h2load -c$CONNECTIONS -D$DURATION over TLS, $(nproc) cores shared by load and servers, median of $ROUNDS rounds"
printf '| %-20s | %10s | %8s | %8s |\n' client requests/s "mean ms" "max ms"
printf '|%s|%s|%s|%s|\n' "----------------------" "------------" "----------" "----------"
for name in "${names[@]}"; do
  printf '| %-20s | %10s | %8s | %8s |\n' "$name" "$(median "${RPS[$name]}")" \
    "$(median "${MEAN[$name]}")" "$(median "${MAX[$name]}")"
done
echo
for name in "HTTP/2, 1 stream" "HTTP/2, 10 streams"; do
  echo "$name / HTTP/1.1: $(ratio "$(median "${RPS[$name]}")" "$(median "${RPS[HTTP/1.1]}")")x requests/s"
done
