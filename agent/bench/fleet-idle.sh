#!/usr/bin/env bash
# CPU and memory of an idle simulated fleet: starts herd-server and `herd-agent fleet` with
# COUNT devices on loopback, waits until the server reports them all online, lets them
# settle, then reads the fleet process's CPU time (utime + stime from /proc/PID/stat) over
# MEASURE seconds. Idle means connected and answering the server's pings, with no
# behaviour events. Both processes are stopped on exit.
#
#   agent/bench/fleet-idle.sh                 # 1000 devices, 60 s window
#   COUNT=2000 MEASURE=120 agent/bench/fleet-idle.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT=${COUNT:-1000}
MEASURE=${MEASURE:-60}
SETTLE=${SETTLE:-10}
PORT=${PORT:-18909}

cargo build --release -p herd-server -p herd-agent >&2
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

key=$(target/release/herd-server --data-dir "$work/server" --register-user admin secret | jq -r .api_key)
target/release/herd-server --data-dir "$work/server" --listen "127.0.0.1:$PORT" 2>"$work/server.log" &
pids+=($!)
until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do sleep 0.2; done

cat >"$work/idle.json" <<'JSON'
{"switches_per_day": 0, "flaps_per_day": 0, "reboots_per_day": 0, "ota_failure_fraction": 0}
JSON
RUST_LOG=warn target/release/herd-agent fleet --server "http://127.0.0.1:$PORT" --api-key "$key" \
    --count "$COUNT" --seed 1 --behaviour "$work/idle.json" --data-dir "$work/fleet" 2>"$work/fleet.log" &
fleet=$!
pids+=($fleet)

start=$(date +%s)
while :; do
    online=$(curl -fsS "http://127.0.0.1:$PORT/healthz" | jq .devices_online)
    [ "$online" -ge "$COUNT" ] && break
    if [ $(( $(date +%s) - start )) -gt 300 ]; then
        echo "only $online of $COUNT devices online after 300 s" >&2
        exit 1
    fi
    sleep 0.5
done
echo "all $COUNT devices online after $(( $(date +%s) - start )) s; settling ${SETTLE} s" >&2
sleep "$SETTLE"

ticks() { awk '{print $14 + $15}' "/proc/$fleet/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
sleep "$MEASURE"
after=$(ticks)
online=$(curl -fsS "http://127.0.0.1:$PORT/healthz" | jq .devices_online)
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$fleet/status")
threads=$(awk '/^Threads/ {print $2}' "/proc/$fleet/status")

cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v s="$MEASURE" 'BEGIN { printf "%.4f", t / hz / s }')
echo "devices:            $COUNT (online at the end: $online)"
echo "window:             $MEASURE s"
echo "fleet CPU:          $cpu cores ($((after - before)) ticks at $hz Hz)"
echo "fleet RSS:          $((rss_kb / 1024)) MiB ($((rss_kb / COUNT)) KiB per device), $threads threads"
