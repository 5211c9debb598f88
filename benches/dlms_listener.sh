#!/usr/bin/env bash
# The DLMS/COSEM wrapper listener beside MQTT, end to end, in one run: the same fleet of
# ciphered DLMS pushes (`meterflow simulate --format dlms`: a self-describing DataNotification
# of five registers per report, general-glo-ciphering with security control 0x30, each meter
# with its own system title, encryption and authentication keys from one credentials CSV)
# against `meterflow serve` (WAL, tag check, decryption, replay check, decoding, Parquet),
# first over the wrapper listener's TCP (one connection per meter, `--dlms`), then over MQTT
# QoS 1 (`meters/{id}/dlms`, each meter logged in with its secret). Each run has a fresh data
# folder; after SIGTERM the rows in Parquet are counted with DuckDB against the plan's.
# Prints one markdown table row per way in, for benches/RESULTS.md.
#
#   BIN=target/release/meterflow benches/dlms_listener.sh [METERS] [MESSAGES]   (defaults 1000 10)
#
# BIN is the meterflow binary (default target/release/meterflow); this script does not build
# it. What "acked" means differs: over TCP a meter's pushes count once meterflow has closed its
# connection in order after the last one (every frame read, hence in the WAL); over MQTT each
# PUBACK. Time and CPU run from the start of `simulate` until the server has decoded every push
# (its /metrics); CPU is utime+stime of the server from /proc (ticks of 10 ms), RSS its VmHWM,
# "µs per push" CPU over pushes acknowledged. Ports
# 127.0.0.1:24883 (MQTT), 24059 (DLMS), 24080 (HTTP); override the base with PORT_BASE=24000.
# Needs python3 with duckdb (installed with pip if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
meters=${1:-1000}
messages=${2:-10}
bin=${BIN:-target/release/meterflow}
[ -x "$bin" ] || { echo "no meterflow binary at $bin: build it (cargo build --release --bin meterflow) or set BIN=" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
python3 -c 'import duckdb' 2>/dev/null || pip install -q duckdb
ulimit -n "$(ulimit -Hn)"
base=${PORT_BASE:-24000}
mqtt_port=$((base + 883))
dlms_port=$((base + 59))
http_port=$((base + 80))

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The fleet: sim-000000.., system title "MFL" + the meter's number, keys derived from it.
python3 - "$meters" "$work/fleet.csv" <<'PY'
import sys, hashlib
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("meter_id,secret,dlms_system_title,dlms_ek,dlms_ak\n")
    for m in range(n):
        h = hashlib.sha256(f"meter {m}".encode()).hexdigest().upper()
        f.write(f"sim-{m:06d},{h[:32].lower()},4D464C{m:010X},{h[:32]},{h[32:]}\n")
PY

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

run() { # dlms-tcp | mqtt
  local way=$1 dir target
  dir=$(mktemp -d -p "$work")
  "$bin" credentials --data-dir "$dir/data" import "$work/fleet.csv" >/dev/null
  # The whole fleet connects from 127.0.0.1 at once: no per-address caps in the way (the
  # listener's default dlms.max_pending_per_address is 256).
  printf '[mqtt]\nmax_connections = 200000\nmax_pending_connections = 200000\nmax_pending_per_address = 200000\n[dlms]\nmax_connections = 65536\nmax_pending_connections = 65536\nmax_pending_per_address = 65536\nmax_inflight_bytes = 1073741824\n' >"$dir/meterflow.toml"
  METERFLOW_LOG=warn "$bin" serve --config "$dir/meterflow.toml" --data-dir "$dir/data" \
    --mqtt-listen "127.0.0.1:$mqtt_port" --mqtt-v5-listen off --coap-listen off \
    --http-listen "127.0.0.1:$http_port" --dlms-listen "127.0.0.1:$dlms_port" 2>"$dir/serve.log" &
  server_pid=$!
  wait_port "$mqtt_port"
  wait_port "$dlms_port"
  case $way in
    dlms-tcp) target=(--dlms "127.0.0.1:$dlms_port") ;;
    mqtt) target=(--mqtt "127.0.0.1:$mqtt_port") ;;
  esac
  local cpu0 cpu1 rss summary t0 t1
  cpu0=$(awk '{print $14+$15}' "/proc/$server_pid/stat")
  t0=$(date +%s.%N)
  summary=$("$bin" simulate --json "${target[@]}" --format dlms --credentials "$work/fleet.csv" \
    --meters "$meters" --messages "$messages" --start 2024-06-01T00:00:00Z --interval-s 900 \
    --concurrency "$meters" 2>"$dir/simulate.log") || true
  # Stored is not yet decoded: the CPU and the time count until the pipeline has decoded every
  # push (meterflow_decoded_total{format="dlms"}), at most 10 minutes.
  local decoded=0
  for _ in $(seq 6000); do
    decoded=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^meterflow_decoded_total\{format="dlms"\} /{print $2}')
    [ "${decoded:-0}" -ge $((meters * messages)) ] 2>/dev/null && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  cpu1=$(awk '{print $14+$15}' "/proc/$server_pid/stat")
  rss=$(awk '/VmHWM/{print $2}' "/proc/$server_pid/status")
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "serve exited with $?: $(tail -5 "$dir/serve.log")" >&2; }
  server_pid=
  [ -n "$summary" ] || { echo "simulate failed: $(tail -5 "$dir/simulate.log")" >&2; exit 1; }
  python3 - "$dir" "$summary" "$way" "$((cpu1 - cpu0))" "$rss" "$meters" "$messages" "$t0" "$t1" <<'PY'
import glob, json, sys, duckdb
d, s, way, ticks, rss, meters, messages = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
decoded_s = float(sys.argv[9]) - float(sys.argv[8])
files = glob.glob(f"{d}/data/readings/*/*.parquet")
rows, distinct = (duckdb.sql(
    f"SELECT count(*), count(DISTINCT (meter_id, channel, ts)) FROM read_parquet('{d}/data/readings/*/*.parquet')"
).fetchall()[0] if files else (0, 0))
letters = sum(sum(1 for l in open(f) if l.strip()) for f in glob.glob(f"{d}/data/dead_letters/*.jsonl"))
expected = meters * messages * 5
acked = max(s["messages_acked"], 1)
cpu = ticks / 100
print(f"| {way} | {meters} x {messages} | {s['dlms_ciphered_meters']} | {s['messages_acked']}/{s['messages_sent']} | "
      f"{s['elapsed_s']:.3f} | {s['acked_per_s']:.0f} | {decoded_s:.3f} | {meters * messages / decoded_s:.0f} | "
      f"{cpu:.2f} | {cpu / acked * 1e6:.0f} | {rss / 1024:.0f} | "
      f"{rows} ({distinct} distinct) | {expected} | {'yes' if rows == distinct == expected else 'NO'} | "
      f"{letters} | {s['meters_failed']} |")
PY
  rm -rf "$dir"
}

echo "| way in | meters x reports | ciphered meters | pushes acked/sent | simulate s | pushes acked/s | s until all decoded | pushes decoded/s | serve CPU s | serve CPU µs per push | serve peak RSS MiB | rows in Parquet | rows expected | exact | dead letters | meters failed |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
run dlms-tcp
run mqtt
