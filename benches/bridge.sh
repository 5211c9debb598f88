#!/usr/bin/env bash
# The bridge beside the MQTT edge, one fleet each, on this machine:
#   edge:   meterflow simulate -> meterflow serve (its own MQTT server)
#   bridge: meterflow simulate -> Mosquitto 2.0 -> meterflow serve (--mqtt-bridge: MQTT 5
#           shared subscription, PUBACK to Mosquitto once in the WAL)
# Both serve runs on their defaults otherwise (WAL, decoding, Parquet). Prints, per run, the
# reports acknowledged and the CPU seconds (utime + stime from /proc) of serve and of
# Mosquitto, per 100k reports. Needs a release build (cargo build --release) and Debian's
# mosquitto. Ports 2189x on 127.0.0.1, temporary folders.
#   benches/bridge.sh [METERS] [MESSAGES]     (default 1000 200)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${METERFLOW_BIN:-target/release/meterflow}
meters=${1:-1000}
messages=${2:-200}
total=$((meters * messages))
command -v mosquitto >/dev/null || { echo "apt-get install mosquitto" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT

hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
cpu_s() { awk -v t="$1" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}'; }
per_100k() { awk -v t="$1" -v hz="$hz" -v n="$total" 'BEGIN {printf "%.2f", t / hz / n * 100000}'; }
wait_log() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.05; done; echo "no '$2' in $1" >&2; exit 1; }
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
wait_metric() { # port name value
  for _ in $(seq 3000); do
    [ "$(metric "$1" "$2" | cut -d. -f1)" = "$3" ] && return
    sleep 0.05
  done
  echo "$2 never reached $3 (now $(metric "$1" "$2"))" >&2; exit 1
}

# Every report decoded and its batch written (batch.max_age_ms is 1 s), so that both runs count
# the whole pipeline.
settle() {
  wait_metric 21891 'meterflow_decoded_total{format="pb"}' "$total"
  sleep 1.5
}

serve() { # name extra-args...
  local name=$1; shift
  mkdir -p "$work/$name"
  "$bin" serve --data-dir "$work/$name/data" --mqtt-listen 127.0.0.1:21890 --mqtt-v5-listen off \
    --coap-listen off --http-listen 127.0.0.1:21891 "$@" 2>"$work/$name/serve.log" &
  serve_pid=$!
  pids+=("$serve_pid")
  wait_log "$work/$name/serve.log" "meterflow ready"
}

stop_serve() { kill -TERM "$serve_pid"; wait "$serve_pid" || true; }

fleet() { # port
  "$bin" simulate --mqtt "127.0.0.1:$1" --meters "$meters" --messages "$messages" --json \
    2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages_acked"])'
}

echo "| path | reports acked / sent | serve CPU s | serve CPU s per 100k reports | Mosquitto CPU s | Mosquitto CPU s per 100k reports |"
echo "|---|---|---|---|---|---|"

# 1. The edge.
serve edge
before=$(ticks "$serve_pid")
acked=$(fleet 21890)
settle
used=$(( $(ticks "$serve_pid") - before ))
stop_serve
echo "| meterflow MQTT edge | $acked / $total | $(cpu_s $used) | $(per_100k $used) | - | - |"

# 2. The bridge.
cat >"$work/mosquitto.conf" <<CONF
listener 21892 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
CONF
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
mosquitto_pid=$!
pids+=("$mosquitto_pid")
sleep 0.5
serve bridge --mqtt-bridge mqtt://127.0.0.1:21892
wait_log "$work/bridge/serve.log" "bridge subscribed"
before=$(ticks "$serve_pid")
mosquitto_before=$(ticks "$mosquitto_pid")
start=$(date +%s.%N)
acked=$(fleet 21892)
wait_metric 21891 'meterflow_bridge_acked_total{bridge="127.0.0.1:21892"}' "$total"
rate=$(awk -v s="$start" -v e="$(date +%s.%N)" -v n="$total" 'BEGIN {printf "%.0f", n / (e - s)}')
settle
used=$(( $(ticks "$serve_pid") - before ))
mosquitto_used=$(( $(ticks "$mosquitto_pid") - mosquitto_before ))
reconnects=$(metric 21891 'meterflow_bridge_reconnects_total{bridge="127.0.0.1:21892"}')
stop_serve
echo "bridge: ${reconnects:-0} reconnects; $rate messages/s from the fleet's first connection to the last PUBACK" >&2
echo "| Mosquitto -> meterflow bridge | $acked / $total | $(cpu_s $used) | $(per_100k $used) | $(cpu_s $mosquitto_used) | $(per_100k $mosquitto_used) |"
