#!/usr/bin/env bash
# Decisions per second through Redis, on loopback, in one run: the decision API on the memory
# store (the ceiling without Redis), the decision API on a real redis-server, and
# redis-benchmark sending the very script sluice runs per decision (EVALSHA of decide.lua for a
# token bucket, 10,000 keys) — what Redis itself can do with it, one decision per call, and
# pipelined 16 deep (its ceiling without batches; sluice sends a gateway thread's concurrent
# decisions as one call). wrk: 2 threads, 64
# connections, 10,000 users, as in the figures issue 6 quotes for Limitador (14,900/s on Redis).
#
#   bash bench/redis.sh                # 3 rounds of 10 s per target
#   ROUNDS=5 DURATION=20s bash bench/redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19100}
REDIS_PORT=$BASE_PORT
MEMORY=127.0.0.1:$((BASE_PORT + 1))
REDIS=127.0.0.1:$((BASE_PORT + 2))

source bench/common.sh
need wrk:wrk redis-server:redis-server redis-benchmark:redis-tools

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --dir "$WORK" --logfile "$WORK/redis.log" & pids+=($!)
export RUST_LOG=warn
"$BIN" serve --policy bench/policy.yaml --store memory --listen "$MEMORY" & pids+=($!)
wait_for "127.0.0.1:$REDIS_PORT"
"$BIN" serve --policy bench/policy.yaml --store "redis://127.0.0.1:$REDIS_PORT" --listen "$REDIS" & pids+=($!)
for address in "$MEMORY" "$REDIS"; do wait_for "$address"; done

SHA=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "$(cat crates/sluice-store/src/redis_store/decide.lua)")

declare -A RPS
# Decisions per script call, per round: how many requests a batch carried on average.
PER_CALL=""
run_wrk() {
  local name=$1 url=$2 out decisions calls
  wrk -t2 -c64 -d2s -s bench/check.lua "$url" >/dev/null
  redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
  out=$(wrk -t2 -c64 -d"$DURATION" -s bench/check.lua "$url")
  if echo "$out" | grep -q "Non-2xx"; then echo "$name: non-2xx answers" >&2; echo "$out" >&2; fi
  RPS[$name]+="$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}') "
  if [ "$url" = "http://$REDIS/v1/check" ]; then
    # The decisions must have gone through Redis: no script call fails the run.
    decisions=$(echo "$out" | awk '/requests in/ {print $1}')
    calls=$(redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' \
      | awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3}')
    if [ -z "$calls" ] || [ "$calls" -eq 0 ]; then echo "$name: no script calls reached Redis" >&2; exit 1; fi
    PER_CALL+="$(ratio "$decisions" "$calls") "
  fi
}
run_redis_benchmark() {
  # The arguments sluice sends for bench/policy.yaml's per-user token bucket.
  local name=$1 pipeline=$2 out
  out=$(redis-benchmark -p "$REDIS_PORT" -c 64 -P "$pipeline" -n 400000 -r 10000 -q \
    EVALSHA "$SHA" 1 "sluice:v1:c:{user=__rand_int__}bench" "" a 1 g a 1 1000000 0 60000 0 60000000000 0 1000000 0)
  RPS[$name]+="$(echo "$out" | awk -F'[: ]+' '/requests per second/ {for (i = 1; i <= NF; i++) if ($i == "requests") {printf "%.0f", $(i - 1); exit}}') "
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run_wrk "decision API, memory" "http://$MEMORY/v1/check"
  run_wrk "decision API, Redis" "http://$REDIS/v1/check"
  run_redis_benchmark "redis-benchmark EVALSHA" 1
  run_redis_benchmark "redis-benchmark, -P 16" 16
done
for name in "${!RPS[@]}"; do
  echo "$name: per round: ${RPS[$name]}" >&2
  RPS[$name]=$(median "${RPS[$name]}")
done
echo
echo "median of $ROUNDS rounds, $(nproc) cores shared by load, sluice and Redis"
for name in "decision API, memory" "decision API, Redis" "redis-benchmark EVALSHA" "redis-benchmark, -P 16"; do
  printf '| %-24s | %10s /s |\n' "$name" "${RPS[$name]}"
done
echo
echo "decisions per script call (sluice's batches), per round: $PER_CALL"
echo
echo "Redis / memory store:             $(ratio "${RPS[decision API, Redis]}" "${RPS[decision API, memory]}")x"
echo "Redis / redis-benchmark EVALSHA:  $(ratio "${RPS[decision API, Redis]}" "${RPS[redis-benchmark EVALSHA]}")x"
echo "Redis / redis-benchmark, -P 16:   $(ratio "${RPS[decision API, Redis]}" "${RPS[redis-benchmark, -P 16]}")x"
echo "Redis / Limitador's 14,900/s (quoted in issue 6, same wrk settings): $(ratio "${RPS[decision API, Redis]}" 14900)x"
