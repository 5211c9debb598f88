#!/usr/bin/env bash
# CoAP plain beside CoAP over DTLS (PSK), end to end, in one run: the same fleet
# (`meterflow simulate --coap`, N meters x M reports, one UDP socket per meter, one CON at a
# time) against `meterflow serve` on the embedded defaults (Parquet, WAL fsync "interval"):
# first plain (an empty credential store on loopback: anonymous), then over DTLS (every
# meter's credential imported; each meter handshakes once and keeps its session). Then a
# handshake storm: H meters that all connect at once and send one report each. After SIGTERM
# every row is counted in Parquet with DuckDB. Prints table rows for benches/RESULTS.md.
#
#   benches/coap_dtls.sh [METERS] [MESSAGES] [STORM]      (defaults 1000 100 5000)
#
# Needs a release build and python3 with duckdb (installed with pip if missing). Uses
# 127.0.0.1 ports 21883 (MQTT), 25683 (CoAP), 25684 (coaps), 28080 (HTTP), a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
meters=${1:-1000}
messages=${2:-100}
storm=${3:-5000}
bin=target/release/meterflow
[ -x "$bin" ] || cargo build --release --bin meterflow
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb

run() { # mode: plain | dtls; meters; messages
  local mode=$1 n=$2 m=$3 dir target
  dir=$(mktemp -d)
  python3 -c "
import sys
print('meter_id,secret')
for i in range($n): print(f'sim-{i:06d},secret-of-sim-{i:06d}-0123456789')" >"$dir/fleet.csv"
  if [ "$mode" = dtls ]; then
    "$bin" credentials import "$dir/fleet.csv" --data-dir "$dir/data" >/dev/null
    target=(--coap 127.0.0.1:25684 --dtls --credentials "$dir/fleet.csv")
  else
    target=(--coap 127.0.0.1:25683)
  fi
  # The whole fleet comes from 127.0.0.1: lift the per-address session limit.
  printf '[coap]\ndtls_max_sessions_per_address = 1000000\n' >"$dir/meterflow.toml"
  METERFLOW_LOG=warn "$bin" serve --config "$dir/meterflow.toml" --data-dir "$dir/data" --mqtt-listen 127.0.0.1:21883 \
    --mqtt-v5-listen off --coap-listen 127.0.0.1:25683 --coaps-listen 127.0.0.1:25684 \
    --http-listen 127.0.0.1:28080 2>"$dir/serve.log" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/28080) 2>/dev/null && break; sleep 0.1; done
  local cpu0 summary cpu1 rss
  cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
  summary=$("$bin" simulate --json "${target[@]}" --meters "$n" --messages "$m" --concurrency "$n" \
    --format pb --shape readings --start 2024-06-01T00:00:00Z --interval-s 900)
  cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
  rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  kill -TERM $pid
  wait $pid
  python3 - "$dir" "$summary" "$mode" "$(( cpu1 - cpu0 ))" "$rss" <<'PY'
import json, sys, duckdb
d, s, mode, ticks, rss = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows, distinct = duckdb.sql(
    f"SELECT count(*), count(DISTINCT (meter_id, channel, ts)) FROM read_parquet('{d}/data/readings/*/*.parquet')"
).fetchall()[0]
acked = s["messages_acked"]
hs = f"{s['connections']} in {s['all_connected_s']:.2f} s ({s['connections']/max(s['all_connected_s'],1e-9):.0f}/s, p50 {s['connect_ms_p50']:.1f} ms, p99 {s['connect_ms_p99']:.1f} ms)" if mode == "dtls" else "—"
print(f"| {mode} | {s['meters']} | {acked}/{s['messages_sent']} | {distinct} of {s['rows_acked']} | "
      f"{s['elapsed_s']:.2f} | {s['acked_per_s']:.0f} | {s['ack_ms_p50']:.2f} | {s['ack_ms_p99']:.2f} | "
      f"{ticks/100:.2f} | {ticks*10/acked*1000:.1f} | {rss/1024:.0f} | {hs} | {s['retransmissions']} | {s['busy_answers']} |")
PY
  rm -rf "$dir"
}

echo "| mode | meters | reports acked/sent | distinct rows in Parquet of acked | simulate s | reports/s | ack p50 ms | ack p99 ms | serve CPU s | serve CPU µs per report | serve peak RSS MiB | DTLS handshakes | retransmissions | 5.03 answers |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
run plain "$meters" "$messages"
run dtls "$meters" "$messages"
run plain "$storm" 1
run dtls "$storm" 1
