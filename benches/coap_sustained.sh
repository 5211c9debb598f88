#!/usr/bin/env bash
# CoAP at a sustained fleet rate: `meterflow simulate --coap` (METERS meters, one UDP socket
# each, one CON at a time, so the rate is what the server sustains) for at least SECONDS
# against `meterflow serve` on the embedded defaults (Parquet, WAL fsync "interval",
# coap.exchange_cache_bytes 512 MiB). Every 15 s it samples the server's RSS, the duplicate
# cache (exchanges held, bytes) and the requests taken, and at the end it counts 5.03s and
# the rows in Parquet. Prints markdown for benches/RESULTS.md.
#
#   benches/coap_sustained.sh [METERS] [SECONDS] [REPORTS_PER_METER]   (defaults 1000 300 12000)
#
# Needs a release build and python3 with duckdb. Ports 21883, 25683, 28080 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
meters=${1:-1000}
seconds=${2:-300}
reports=${3:-12000}
bin=target/release/meterflow
[ -x "$bin" ] || cargo build --release --bin meterflow
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb
dir=$(mktemp -d)
METERFLOW_LOG=warn "$bin" serve --data-dir "$dir/data" --mqtt-listen 127.0.0.1:21883 \
  --mqtt-v5-listen off --coap-listen 127.0.0.1:25683 --http-listen 127.0.0.1:28080 \
  2>"$dir/serve.log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/28080) 2>/dev/null && break; sleep 0.1; done
metric() { curl -s 127.0.0.1:28080/metrics | awk -v n="$1" 'index($0, n" ")==1 {print $2; f=1} END {if (!f) print 0}'; }
"$bin" simulate --json --coap 127.0.0.1:25683 --meters "$meters" --messages "$reports" \
  --concurrency "$meters" --format pb --shape readings --start 2020-01-01T00:00:00Z \
  --interval-s 60 --meter-timeout-s 100000 >"$dir/summary.json" &
sim=$!
echo "| s | requests taken | requests/s (last 15 s) | serve RSS MiB | exchanges held | exchange cache MiB | bytes per exchange | 5.03 for the cache |"
echo "|---|---|---|---|---|---|---|---|"
start=$(date +%s.%N); last=0; t=0
cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
while kill -0 $sim 2>/dev/null; do
  sleep 15; t=$((t + 15))
  taken=$(metric 'meterflow_received_total{source="coap"}')
  held=$(metric meterflow_coap_exchanges); bytes=$(metric meterflow_coap_exchange_bytes)
  full=$(metric 'meterflow_coap_busy_total{why="exchanges"}')
  rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
  awk -v t=$t -v taken="$taken" -v last="$last" -v rss="$rss" -v held="$held" -v bytes="$bytes" -v full="$full" \
    'BEGIN {printf "| %d | %d | %.0f | %.0f | %d | %.0f | %.1f | %d |\n", t, taken, (taken-last)/15, rss/1024, held, bytes/1048576, (held>0?bytes/held:0), full}'
  last=$taken
done
wait $sim
cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid
python3 - "$dir" "$(( cpu1 - cpu0 ))" "$hwm" <<'PY'
import json, sys, duckdb
d, ticks, hwm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = json.load(open(f"{d}/summary.json"))
rows, distinct = duckdb.sql(
    f"SELECT count(*), count(DISTINCT (meter_id, channel, ts)) FROM read_parquet('{d}/data/readings/*/*.parquet')"
).fetchall()[0]
print(f"\n{s['messages_acked']}/{s['messages_sent']} reports acked in {s['elapsed_s']:.0f} s = {s['acked_per_s']:.0f}/s; "
      f"ack p50 {s['ack_ms_p50']:.1f} ms, p99 {s['ack_ms_p99']:.1f} ms; {s['busy_answers']} answers 5.03, "
      f"{s['retransmissions']} retransmissions; rows {rows} ({distinct} distinct, {s['rows_acked']} acked); "
      f"serve CPU {ticks/100:.0f} s = {ticks*10/max(s['messages_acked'],1)*1000:.1f} µs per report; peak RSS {hwm/1024:.0f} MiB")
PY
rm -rf "$dir"
