#!/usr/bin/env bash
# The gateway's load harness, on loopback: the decision API, the proxy, the upstream hit directly
# (the proxy's baseline) and nginx's limit_req + proxy_pass in front of the same upstream (the
# proxy's peer), each under the same wrk load — 2 threads, 64 connections, 10,000 distinct keys —
# one after the other in this one run, in ROUNDS interleaved rounds (the machine is shared and
# noisy; a round gives every target the same conditions). Prints the median over rounds of
# requests/s, p50 and p99, and the ratios; and the CPU time the server under test spent per
# request (user and kernel, from /proc while wrk ran), which the other processes sharing the
# cores move far less than they move throughput and latency; and each server's resident memory
# after its first round and after its last, which stays flat unless it keeps something per request.
#
# With ACCESS_LOG=on, the gateways (RUST_LOG=info) and nginx (access_log) write a line per
# request to a file, as a production deployment does; by default neither logs requests.
#
#   bash bench/load.sh                # 3 rounds of 10 s per target
#   ROUNDS=5 DURATION=20s bash bench/load.sh
#   ACCESS_LOG=on bash bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ACCESS_LOG=${ACCESS_LOG:-off}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
BASE_PORT=${BASE_PORT:-19000}
ECHO=127.0.0.1:$BASE_PORT
DECISION=127.0.0.1:$((BASE_PORT + 1))
PROXY=127.0.0.1:$((BASE_PORT + 2))
NGINX=127.0.0.1:$((BASE_PORT + 3))

source bench/common.sh
source bench/nginx.sh
need wrk:wrk nginx:nginx-light
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

mkdir -p "$WORK/logs"
# Access logs, when on, go to files (appended to, so that they can be emptied between runs);
# otherwise the gateways' warnings stay on the terminal.
GATEWAY_LOG=warn NGINX_ACCESS_LOG=off DECISION_LOG=/dev/stderr PROXY_LOG=/dev/stderr
if [ "$ACCESS_LOG" = on ]; then
  GATEWAY_LOG=info NGINX_ACCESS_LOG=$WORK/logs/access.log
  DECISION_LOG=$WORK/logs/decision.log PROXY_LOG=$WORK/logs/proxy.log
fi
RUST_LOG=warn "$BIN" echo --listen "$ECHO" & pids+=($!); echo_pid=$!
RUST_LOG=$GATEWAY_LOG "$BIN" serve --policy bench/policy.yaml --store memory --listen "$DECISION" \
  2>>"$DECISION_LOG" & pids+=($!); decision_pid=$!
RUST_LOG=$GATEWAY_LOG "$BIN" serve --policy bench/policy.yaml --store memory --listen "$PROXY" \
  --upstream "http://$ECHO" 2>>"$PROXY_LOG" & pids+=($!); proxy_pid=$!

nginx_conf "$WORK/nginx.conf" "$WORK" "worker_processes 2;" "$NGINX" "$ECHO" "$NGINX_ACCESS_LOG"
"$NGINX_BIN" -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' & pids+=($!); nginx_pid=$!

for address in "$ECHO" "$DECISION" "$PROXY" "$NGINX"; do wait_for "$address"; done

# Converts wrk's latency (e.g. 812.00us, 1.20ms, 1.01s) to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.2f", n
  }'
}

# cpu_ticks KIND PID… — user (KIND=user) or kernel (KIND=sys) clock ticks the processes spent.
cpu_ticks() {
  local field=14 pid
  [ "$1" = sys ] && field=15
  shift
  for pid in "$@"; do awk -v f="$field" '{print $f}' "/proc/$pid/stat"; done | awk '{t += $1} END {print t + 0}'
}

# rss_kb PID… — the processes' resident memory, in kB.
rss_kb() {
  local pid
  for pid in "$@"; do awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; done | awk '{t += $1} END {print t + 0}'
}

declare -A RPS P50 P99 USER SYS RSS_FIRST RSS_LAST
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() {
  local name=$1 script=$2 url=$3 out user sys requests
  shift 3  # the rest: the server's processes
  # A short warm-up fills connection pools and tables.
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$script" "$url" >/dev/null
  user=$(cpu_ticks user "$@"); sys=$(cpu_ticks sys "$@")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url")
  user=$(( $(cpu_ticks user "$@") - user )); sys=$(( $(cpu_ticks sys "$@") - sys ))
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  if echo "$out" | grep -q "Non-2xx"; then
    echo "$name: some responses were not 2xx:" >&2
    echo "$out" >&2
  fi
  RPS[$name]+="$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}') "
  P50[$name]+="$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
  P99[$name]+="$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  USER[$name]+="$(awk -v t="$user" -v u="$TICK_US" -v n="$requests" 'BEGIN {printf "%.2f", t * u / n}') "
  SYS[$name]+="$(awk -v t="$sys" -v u="$TICK_US" -v n="$requests" 'BEGIN {printf "%.2f", t * u / n}') "
  # Memory after each round: a server that keeps something per request grows round on round.
  RSS_LAST[$name]=$(rss_kb "$@")
  RSS_FIRST[$name]=${RSS_FIRST[$name]:-${RSS_LAST[$name]}}
  for log in "$WORK"/logs/*.log; do : > "$log"; done  # the lines were written; free the space
}


for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run "decision API" bench/check.lua "http://$DECISION/v1/check" "$decision_pid"
  run "upstream direct" bench/users.lua "http://$ECHO/items" "$echo_pid"
  run "sluice proxy" bench/users.lua "http://$PROXY/items" "$proxy_pid"
  # nginx's workers; its master only watches them.
  run "nginx limit_req" bench/users.lua "http://$NGINX/items" $(pgrep -P "$nginx_pid")
done
for name in "${!RPS[@]}"; do
  echo "$name: requests/s per round: ${RPS[$name]}" >&2
  RPS[$name]=$(median "${RPS[$name]}")
  P50[$name]=$(median "${P50[$name]}")
  P99[$name]=$(median "${P99[$name]}")
  USER[$name]=$(median "${USER[$name]}")
  SYS[$name]=$(median "${SYS[$name]}")
done

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, 10,000 keys, $(nproc) cores shared by load and servers, median of $ROUNDS rounds, access logs $ACCESS_LOG"
printf '| %-16s | %10s | %8s | %8s | %12s | %12s |\n' target "requests/s" "p50 ms" "p99 ms" "user us/req" "kernel us/req"
printf '|%s|%s|%s|%s|%s|%s|\n' ------------------ ------------ ---------- ---------- -------------- --------------
for name in "decision API" "sluice proxy" "nginx limit_req" "upstream direct"; do
  printf '| %-16s | %10s | %8s | %8s | %12s | %12s |\n' "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${USER[$name]}" "${SYS[$name]}"
done
echo
echo "sluice proxy / nginx limit_req:   $(ratio "${RPS[sluice proxy]}" "${RPS[nginx limit_req]}")x requests/s, p99 $(ratio "${P99[sluice proxy]}" "${P99[nginx limit_req]}")x, CPU per request $(ratio "$(awk -v a="${USER[sluice proxy]}" -v b="${SYS[sluice proxy]}" 'BEGIN {print a + b}')" "$(awk -v a="${USER[nginx limit_req]}" -v b="${SYS[nginx limit_req]}" 'BEGIN {print a + b}')")x"
echo -n "resident memory, MB after the first round -> after the last:"
for name in "decision API" "sluice proxy" "nginx limit_req"; do
  echo -n " $name $((RSS_FIRST[$name] / 1024)) -> $((RSS_LAST[$name] / 1024));"
done
echo
echo "sluice proxy / upstream direct:   $(ratio "${RPS[sluice proxy]}" "${RPS[upstream direct]}")x requests/s"
echo "decision API / Limitador's 34,000 req/s (quoted in issue 4, same wrk settings): $(ratio "${RPS[decision API]}" 34000)x"
