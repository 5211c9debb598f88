#!/usr/bin/env bash
# End-to-end load run: `meterflow simulate` (N meters, one MQTT connection each, QoS 1)
# against `meterflow serve` on the embedded defaults, then SIGTERM and a count of every row in
# the Parquet files with DuckDB. Prints one line per run for benches/RESULTS.md.
#
#   benches/load_run.sh [METERS] [MESSAGES]      (defaults 1000 200)
#
# Needs a release build (cargo build --release) and python3 with duckdb (installed with pip
# if missing). Uses ports 21883/28080 on 127.0.0.1 and a temporary data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
meters=${1:-1000}
messages=${2:-200}
bin=target/release/meterflow
[ -x "$bin" ] || cargo build --release --bin meterflow
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb

run() { # format shape messages
  local format=$1 shape=$2 n=$3 dir
  dir=$(mktemp -d)
  METERFLOW_LOG=warn "$bin" serve --data-dir "$dir/data" --mqtt-listen 127.0.0.1:21883 \
    --mqtt-v5-listen off --http-listen 127.0.0.1:28080 2>"$dir/serve.log" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/21883) 2>/dev/null && break; sleep 0.1; done
  local cpu0 summary cpu1 rss
  cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
  summary=$("$bin" simulate --json --mqtt 127.0.0.1:21883 --meters "$meters" --messages "$n" \
    --format "$format" --shape "$shape" --start 2024-06-01T00:00:00Z --interval-s 900)
  cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  kill -TERM $pid
  wait $pid
  python3 - "$dir" "$summary" "$format" "$shape" "$(( (cpu1 - cpu0) ))" "$rss" <<'PY'
import json, sys, duckdb
d, s, fmt, shape, ticks, rss = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
rows, distinct = duckdb.sql(
    f"SELECT count(*), count(DISTINCT (meter_id, channel, ts)) FROM read_parquet('{d}/data/readings/*/*.parquet')"
).fetchall()[0]
ok = "all arrived" if distinct == s["rows_acked"] else f"MISSING {s['rows_acked'] - distinct}"
print(f"| {fmt} | {shape} | {s['meters']} | {s['messages_acked']}/{s['messages_sent']} | {s['rows_acked']} | "
      f"{rows} ({distinct} distinct, {ok}) | {s['elapsed_s']:.2f} | {s['acked_per_s']:.0f} | "
      f"{s['rows_acked']/s['elapsed_s']:.0f} | {ticks/100:.2f} | {rss/1024:.0f} | {s['reconnects']} |")
PY
  rm -rf "$dir"
}

echo "| format | shape | meters | reports acked/sent | rows acked | rows in Parquet | simulate s | reports/s | rows/s | serve CPU s | serve peak RSS MiB | reconnects |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
run pb readings "$messages"
run json readings "$messages"
run senml readings "$messages"
run dsmr readings "$messages"
run pb series $(( messages / 10 ))
run json series $(( messages / 10 ))
