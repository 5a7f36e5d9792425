#!/usr/bin/env bash
# Envoy's rate limit service under load, on loopback: `sluice serve --rls-listen` deciding every
# call against bench/rls-policy.yaml (one descriptor per call, 10,000 users, memory store), beside
# its baseline, a gRPC server of the same generated code that answers every call OK without
# deciding anything (what gRPC alone costs). Both serve on one thread; a third target, sluice on
# one thread per core (--threads, as it runs by default), shows what the service's threads add. The load generator (crates/sluice-rls/examples/rls-load.rs) runs on one
# thread with 64 callers over 8 HTTP/2 connections (which the kernel spreads over the threads'
# listeners). ROUNDS interleaved rounds; prints the median calls/s, p50 and p99, the CPU each
# server spent per call (user + kernel, from /proc), and the ratios. The load generator shares the
# machine's cores: on two, more server threads compete with it for them, so the CPU per call, not
# the calls/s, is what carries over to a server with cores of its own.
#
#   bash bench/rls.sh                 # 3 rounds of 10 s per target
#   ROUNDS=5 SECONDS_EACH=20 bash bench/rls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-10}
BASE_PORT=${BASE_PORT:-19100}
GATEWAY=127.0.0.1:$BASE_PORT
SLUICE=127.0.0.1:$((BASE_PORT + 1))
FLOOR=127.0.0.1:$((BASE_PORT + 2))
ADMIN=127.0.0.1:$((BASE_PORT + 3))
GATEWAY_ALL=127.0.0.1:$((BASE_PORT + 4))
SLUICE_ALL=127.0.0.1:$((BASE_PORT + 5))
ADMIN_ALL=127.0.0.1:$((BASE_PORT + 6))
CORES=$(nproc)

source bench/common.sh
cargo build --release -q -p sluice-rls --example rls-load
LOAD=target/release/examples/rls-load

RUST_LOG=warn "$BIN" serve --policy bench/rls-policy.yaml --store memory --listen "$GATEWAY" \
  --admin-listen "$ADMIN" --threads 1 --rls-listen "$SLUICE" &
pids+=($!); declare -A PID; PID[sluice]=$!
RUST_LOG=warn "$BIN" serve --policy bench/rls-policy.yaml --store memory --listen "$GATEWAY_ALL" \
  --admin-listen "$ADMIN_ALL" --threads "$CORES" --rls-listen "$SLUICE_ALL" &
pids+=($!); PID[all]=$!
"$LOAD" --floor "$FLOOR" &
pids+=($!); PID[floor]=$!
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# ticks PID: the user and kernel clock ticks the process has spent.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for "$SLUICE"
wait_for "$SLUICE_ALL"
wait_for "$FLOOR"

declare -A RPS P50 P99 CPU
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for name in sluice floor all; do
    target=$SLUICE; [ "$name" = floor ] && target=$FLOOR; [ "$name" = all ] && target=$SLUICE_ALL
    before=$(ticks "${PID[$name]}")
    read -r _ rps _ p50 _ p99 _ calls _ <<<"$("$LOAD" --target "$target" --connections 8 --seconds "$SECONDS_EACH")"
    cpu=$(awk -v t=$(( $(ticks "${PID[$name]}") - before )) -v u="$TICK_US" -v c="$calls" \
      'BEGIN { printf "%.2f", t * u / c }')
    echo "  $name: $rps calls/s, p50 $p50 ms, p99 $p99 ms, $cpu us CPU/call" >&2
    RPS[$name]+="$rps "; P50[$name]+="$p50 "; P99[$name]+="$p99 "; CPU[$name]+="$cpu "
  done
done
for name in sluice floor all; do
  RPS[$name]=$(median "${RPS[$name]}"); P50[$name]=$(median "${P50[$name]}"); P99[$name]=$(median "${P99[$name]}")
  CPU[$name]=$(median "${CPU[$name]}")
done

echo "ShouldRateLimit, 1 descriptor, 10,000 users, 64 callers over 8 HTTP/2 connections, median of $ROUNDS rounds"
printf '%-42s %10s %8s %8s %12s\n' target calls/s p50_ms p99_ms cpu_us/call
printf '%-42s %10s %8s %8s %12s\n' "sluice --rls-listen" "${RPS[sluice]}" "${P50[sluice]}" "${P99[sluice]}" "${CPU[sluice]}"
printf '%-42s %10s %8s %8s %12s\n' "gRPC floor (answers OK, decides nothing)" "${RPS[floor]}" "${P50[floor]}" "${P99[floor]}" "${CPU[floor]}"
printf '%-42s %10s %8s %8s %12s\n' "sluice --rls-listen --threads $CORES" "${RPS[all]}" "${P50[all]}" "${P99[all]}" "${CPU[all]}"
echo "sluice / floor (one thread each): calls/s $(ratio "${RPS[sluice]}" "${RPS[floor]}"), p99 $(ratio "${P99[sluice]}" "${P99[floor]}"), CPU/call $(ratio "${CPU[sluice]}" "${CPU[floor]}")"
echo "sluice on $CORES threads / on one: calls/s $(ratio "${RPS[all]}" "${RPS[sluice]}"), p99 $(ratio "${P99[all]}" "${P99[sluice]}"), CPU/call $(ratio "${CPU[all]}" "${CPU[sluice]}")"
