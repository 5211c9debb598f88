#!/usr/bin/env bash
# CoAP beside MQTT, end to end, in one run: the same fleet (`meterflow simulate`, N meters x M
# reports, one socket or connection per meter) against `meterflow serve` on the embedded
# defaults (Parquet, WAL fsync "interval"), first over MQTT QoS 1, then over CoAP CON. After
# SIGTERM every row is counted in Parquet with DuckDB: loss = rows acknowledged - distinct rows
# stored. Prints one table row per run for benches/RESULTS.md.
#
#   benches/coap_vs_mqtt.sh [METERS] [MESSAGES] [FORMAT]      (defaults 1000 100 pb)
#
# Needs a release build (cargo build --release) and python3 with duckdb (installed with pip if
# missing). Uses 127.0.0.1 ports 21883 (MQTT), 25683 (CoAP), 28080 (HTTP) and a temporary
# data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
meters=${1:-1000}
messages=${2:-100}
format=${3:-pb}
bin=target/release/meterflow
[ -x "$bin" ] || cargo build --release --bin meterflow
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb

run() { # protocol: mqtt | coap
  local protocol=$1 dir target
  dir=$(mktemp -d)
  METERFLOW_LOG=warn "$bin" serve --data-dir "$dir/data" --mqtt-listen 127.0.0.1:21883 \
    --mqtt-v5-listen off --coap-listen 127.0.0.1:25683 --http-listen 127.0.0.1:28080 \
    2>"$dir/serve.log" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/21883) 2>/dev/null && break; sleep 0.1; done
  case $protocol in
    mqtt) target=(--mqtt 127.0.0.1:21883) ;;
    coap) target=(--coap 127.0.0.1:25683) ;;
  esac
  local cpu0 summary cpu1 rss
  cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
  summary=$("$bin" simulate --json "${target[@]}" --meters "$meters" --messages "$messages" \
    --format "$format" --shape readings --start 2024-06-01T00:00:00Z --interval-s 900 --inflight 1)
  cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  kill -TERM $pid
  wait $pid
  python3 - "$dir" "$summary" "$protocol" "$(( cpu1 - cpu0 ))" "$rss" <<'PY'
import json, sys, duckdb
d, s, protocol, ticks, rss = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows, distinct = duckdb.sql(
    f"SELECT count(*), count(DISTINCT (meter_id, channel, ts)) FROM read_parquet('{d}/data/readings/*/*.parquet')"
).fetchall()[0]
loss = s["rows_acked"] - distinct
print(f"| {protocol} | {s['format']} | {s['meters']} | {s['messages_acked']}/{s['messages_sent']} | "
      f"{rows} ({distinct} distinct) | {loss} | {s['elapsed_s']:.2f} | {s['acked_per_s']:.0f} | "
      f"{s['ack_ms_p50']:.2f} | {s['ack_ms_p99']:.2f} | {s['ack_ms_max']:.1f} | {ticks/100:.2f} | {rss/1024:.0f} | "
      f"{s['reconnects']} | {s['retransmissions']} | {s['busy_answers']} |")
PY
  rm -rf "$dir"
}

echo "| protocol | format | meters | reports acked/sent | rows in Parquet | rows lost | simulate s | reports/s | ack p50 ms | ack p99 ms | ack max ms | serve CPU s | serve peak RSS MiB | reconnects | retransmissions | 5.03 answers |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
run mqtt
run coap
