#!/usr/bin/env bash
# Counted requests through the durable embedded store, beside the same load on the memory store:
# the proxy in front of the echo upstream, every request counted against a monthly quota of one
# of 10,000 users (bench/quota-policy.yaml), under wrk — 2 threads, 64 connections — in ROUNDS
# interleaved rounds in this one run. On the embedded store each 2xx waits for the fsync of the
# batch holding its count. Prints the medians, the ratio, and the commits the embedded store made.
#
#   bash bench/quota.sh
#   ROUNDS=5 DURATION=20s bash bench/quota.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19010}
ECHO=127.0.0.1:$BASE_PORT
MEMORY=127.0.0.1:$((BASE_PORT + 1))
EMBEDDED=127.0.0.1:$((BASE_PORT + 2))
ADMIN=127.0.0.1:$((BASE_PORT + 3))

source bench/common.sh
need wrk:wrk

export RUST_LOG=warn
"$BIN" echo --listen "$ECHO" & pids+=($!)
"$BIN" serve --policy bench/quota-policy.yaml --store memory --listen "$MEMORY" \
  --upstream "http://$ECHO" & pids+=($!)
"$BIN" serve --policy bench/quota-policy.yaml --store "$WORK/data" --listen "$EMBEDDED" \
  --admin-listen "$ADMIN" --admin-token bench --upstream "http://$ECHO" & pids+=($!)

for address in "$ECHO" "$MEMORY" "$EMBEDDED"; do wait_for "$address"; done

declare -A RPS
run() {
  local name=$1 url=$2 out
  wrk -t2 -c64 -d2s -s bench/users.lua "$url" >/dev/null
  out=$(wrk -t2 -c64 -d"$DURATION" -s bench/users.lua "$url")
  if echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx answers:" >&2; echo "$out" >&2; fi
  RPS[$name]+="$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}') "
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run memory "http://$MEMORY/items"
  run embedded "http://$EMBEDDED/items"
done
for name in memory embedded; do
  echo "$name: requests/s per round: ${RPS[$name]}" >&2
  RPS[$name]=$(median "${RPS[$name]}")
done
echo
echo "counted requests/s, median of $ROUNDS rounds of $DURATION (wrk -t2 -c64, 10,000 users):"
printf '  %-24s %8s\n' "memory store" "${RPS[memory]}" "embedded store (fsync'd)" "${RPS[embedded]}"
awk -v e="${RPS[embedded]}" -v m="${RPS[memory]}" 'BEGIN { printf "  embedded / memory: %.2fx\n", e / m }'
# How many writes each fsync carried, from the embedded server's metrics.
curl -s -H "Authorization: Bearer bench" "http://$ADMIN/metrics" | awk '
  /^sluice_store_commits_total/ { c = $2 } /^sluice_store_commit_writes_total/ { w = $2 }
  END { if (c > 0) printf "  embedded store: %d commits carried %d writes (%.0f per fsync)\n", c, w, w / c }'

