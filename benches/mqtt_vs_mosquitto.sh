#!/usr/bin/env bash
# The MQTT edge beside Mosquitto 2.0, side by side in one run: the same `meterflow simulate`
# fleet against `meterflow serve` (WAL, decoding and Parquet included) and against Mosquitto
# with one QoS 1 subscriber on meters/# (its broker only is measured). Prints the markdown
# tables of benches/RESULTS.md.
#
#   benches/mqtt_vs_mosquitto.sh [load|idle|all]     (default all)
#
# load: 1000 meters x 200 reports; 5000 x 20 (1000 connections at a time); churn (5000 x 20,
#       a new connection per report); the churn with credentials; the churn with TLS and
#       credentials.
# idle: IDLE (default 19000) authenticated idle connections, plain and TLS: memory per
#       connection, time to accept them all, then a restart of the server with the whole
#       fleet connected (a reconnect storm): how long until every meter is back.
#
# Needs a release build (cargo build --release --bin meterflow), mosquitto and
# mosquitto-clients (Debian), openssl. Ports 2188x on 127.0.0.1, temporary folders.
# CPU is utime+stime of the server process from /proc (clock ticks of 10 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
bin=$PWD/target/release/meterflow
[ -x "$bin" ] || cargo build --release --bin meterflow
command -v mosquitto >/dev/null || { echo "apt-get install mosquitto mosquitto-clients" >&2; exit 1; }
idle=${IDLE:-19000}
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
port=21883
tls_port=21884

# --- credentials and certificates, shared by both servers -------------------------------
make_credentials() { # N FILE: meter_id,secret for sim-000000..
  python3 - "$1" "$2" <<'PY'
import sys, hashlib
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("meter_id,secret\n")
    for m in range(n):
        f.write(f"sim-{m:06d},{hashlib.sha256(str(m).encode()).hexdigest()[:32]}\n")
PY
}
make_credentials "$idle" "$work/fleet.csv"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" \
  -out "$work/ca.crt" -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/server.key" \
  -out "$work/server.csr" -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -out "$work/server.crt" -days 2 -extfile "$work/san.ext" 2>/dev/null
# Mosquitto's password file: the same secrets, hashed by mosquitto_passwd in one pass.
{ tail -n +2 "$work/fleet.csv" | tr , :; echo "subscriber:subscriber-secret-0123"; } >"$work/mosquitto.passwd"
mosquitto_passwd -U "$work/mosquitto.passwd"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

start_meterflow() { # DIR [tls]
  local dir=$1 cfg=$1/meterflow.toml
  mkdir -p "$dir"
  # The whole fleet logs in from one loopback address (a few above 25 000 meters), all at
  # once, as Mosquitto (which has no such limit) sees it too: no cap on logins in progress.
  printf '[mqtt]\nmax_connections = 200000\nmax_pending_connections = 200000\nmax_pending_per_address = 200000\n' >"$cfg"
  if [ "${2:-}" = tls ]; then
    printf 'tls_cert = "%s"\ntls_key = "%s"\n' "$work/server.crt" "$work/server.key" >>"$cfg"
  fi
  local extra=()
  [ "${2:-}" = tls ] && extra=(--mqtt-tls-listen "127.0.0.1:$tls_port")
  METERFLOW_LOG=warn "$bin" serve --config "$cfg" --data-dir "$dir/data" --mqtt-listen "127.0.0.1:$port" \
    --mqtt-v5-listen off --coap-listen off --http-listen 127.0.0.1:28080 "${extra[@]}" 2>>"$dir/serve.log" &
  server_pid=$!
  wait_port "$port"
}

start_mosquitto() { # DIR [auth|tls]
  local dir=$1 conf=$1/mosquitto.conf
  mkdir -p "$dir"
  {
    echo "user root"
    echo "per_listener_settings false"
    echo "persistence false"
    echo "log_dest file $dir/mosquitto.log"
    echo "log_type error"
    echo "max_queued_messages 0"
    echo "listener $port 127.0.0.1"
    echo "max_connections -1"
    if [ "${2:-}" = tls ]; then
      echo "listener $tls_port 127.0.0.1"
      echo "certfile $work/server.crt"
      echo "keyfile $work/server.key"
    fi
    if [ -n "${2:-}" ]; then
      echo "allow_anonymous false"
      echo "password_file $work/mosquitto.passwd"
    else
      echo "allow_anonymous true"
    fi
  } >"$conf"
  mosquitto -c "$conf" &
  server_pid=$!
  wait_port "$port"
  local auth=()
  [ -n "${2:-}" ] && auth=(-u subscriber -P subscriber-secret-0123)
  mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -t 'meters/#' "${auth[@]}" >/dev/null &
  sub_pid=$!
  sleep 0.3
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  if [ -n "${sub_pid:-}" ]; then kill "$sub_pid" 2>/dev/null || true; wait "$sub_pid" 2>/dev/null || true; sub_pid=; fi
}

# --- load runs --------------------------------------------------------------------------
load_run() { # NAME SERVER(meterflow|mosquitto) MODE(''|auth|tls) simulate-args...
  local name=$1 server=$2 mode=$3 dir
  shift 3
  dir=$(mktemp -d -p "$work")
  if [ "$server" = meterflow ]; then
    if [ -n "$mode" ]; then "$bin" credentials import "$work/fleet.csv" --data-dir "$dir/data" >/dev/null; fi
    start_meterflow "$dir" "$mode"
  else
    start_mosquitto "$dir" "$mode"
  fi
  local target=(--mqtt "127.0.0.1:$port")
  local sim_mode=()
  [ -n "$mode" ] && sim_mode+=(--credentials "$work/fleet.csv")
  [ "$mode" = tls ] && { target=(--mqtt "127.0.0.1:$tls_port"); sim_mode+=(--tls-ca "$work/ca.crt"); }
  local t0 t1 summary
  t0=$(ticks "$server_pid")
  summary=$("$bin" simulate --json "${target[@]}" "${sim_mode[@]}" --start 2024-06-01T00:00:00Z "$@" 2>/dev/null)
  t1=$(ticks "$server_pid")
  local rss
  rss=$(peak_rss_kib "$server_pid")
  stop_server
  python3 - "$name" "$server" "$summary" "$((t1 - t0))" "$rss" <<'PY'
import json, sys
name, server, s, ticks, rss = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
acked = max(s["messages_acked"], 1)
cpu = ticks / 100
print(f"| {name} | {server} | {s['messages_acked']}/{s['messages_sent']} | {s['acked_per_s']:.0f} | "
      f"{cpu:.2f} | {cpu / acked * 100_000:.2f} | {s['connections']} | {s['connects_per_s']:.0f} | "
      f"{s['connect_ms_p50']:.2f} / {s['connect_ms_p99']:.2f} | {s['reconnects']} | "
      f"{s['ack_ms_p50']:.2f} / {s['ack_ms_p99']:.2f} | {rss / 1024:.0f} | {s['meters_failed']} |")
PY
  rm -rf "$dir"
}

if [ "$what" = load ] || [ "$what" = all ]; then
  echo "| run | server | reports acked/sent | reports/s | server CPU s | CPU s per 100k reports | connections | connections/s | CONNACK ms p50 / p99 | reconnects | ack ms p50 / p99 | peak RSS MiB | meters failed |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for server in meterflow mosquitto; do
    load_run "1000 x 200" "$server" "" --meters 1000 --messages 200
  done
  for server in meterflow mosquitto; do
    load_run "5000 x 20, 1000 at a time" "$server" "" --meters 5000 --messages 20 --concurrency 1000
  done
  for server in meterflow mosquitto; do
    load_run "churn: 5000 x 20, reconnect every report" "$server" "" --meters 5000 --messages 20 --concurrency 1000 --reconnect-every 1
  done
  for server in meterflow mosquitto; do
    load_run "churn, authenticated" "$server" auth --meters 5000 --messages 20 --concurrency 1000 --reconnect-every 1
  done
  for server in meterflow mosquitto; do
    load_run "churn, TLS + authenticated" "$server" tls --meters 5000 --messages 20 --concurrency 1000 --reconnect-every 1
  done
  for server in meterflow mosquitto; do
    load_run "1000 x 200, TLS + authenticated" "$server" tls --meters 1000 --messages 200
  done
fi

# --- idle connections and the reconnect storm -------------------------------------------
idle_run() { # SERVER MODE(auth|tls)
  local server=$1 mode=$2 dir
  dir=$(mktemp -d -p "$work")
  if [ "$server" = meterflow ]; then
    mkdir -p "$dir"
    "$bin" credentials import "$work/fleet.csv" --data-dir "$dir/data" >/dev/null
    start_meterflow "$dir" "$mode"
  else
    start_mosquitto "$dir" "$mode"
  fi
  sleep 0.5
  local base
  base=$(rss_kib "$server_pid")
  local target=(--mqtt "127.0.0.1:$port") sim_mode=(--credentials "$work/fleet.csv")
  [ "$mode" = tls ] && { target=(--mqtt "127.0.0.1:$tls_port"); sim_mode+=(--tls-ca "$work/ca.crt"); }
  : >"$dir/sim.err"
  "$bin" simulate --json "${target[@]}" "${sim_mode[@]}" --meters "$idle" --messages 0 \
    --concurrency "$idle" --hold-s 40 --meter-timeout-s 60 >"$dir/sim.json" 2>"$dir/sim.err" &
  local sim=$!
  for _ in $(seq 600); do grep -q "meters connected" "$dir/sim.err" && break; sleep 0.1; done
  sleep 2
  local full t_before
  full=$(rss_kib "$server_pid")
  # The reconnect storm: restart the server while every meter is connected.
  local storm0 storm1
  storm0=$(date +%s.%N)
  stop_server
  if [ "$server" = meterflow ]; then start_meterflow "$dir" "$mode"; else start_mosquitto "$dir" "$mode"; fi
  storm1=$(date +%s.%N)
  wait "$sim" || true
  local errors
  errors=$( (grep -h -c -E "ERROR|Error" "$dir/serve.log" "$dir/mosquitto.log" 2>/dev/null || true) | awk "{s+=\$1} END {print s+0}")
  stop_server
  python3 - "$server" "$mode" "$idle" "$base" "$full" "$dir/sim.json" "$storm0" "$storm1" "${errors:-0}" <<'PY'
import json, sys
server, mode, n, base, full, sim, s0, s1, errors = sys.argv[1:]
n, base, full = int(n), int(base), int(full)
s = json.load(open(sim))
per = (full - base) * 1024 / n
print(f"| {server} | {mode} | {n} | {s['all_connected_s']:.2f} | {n / max(s['all_connected_s'], 1e-9):.0f} | "
      f"{s['connect_ms_p50']:.2f} / {s['connect_ms_p99']:.2f} | {base / 1024:.1f} | {full / 1024:.1f} | {per:.0f} | "
      f"{float(s1) - float(s0):.2f} | {s['recovery_s']:.2f} | {s['reconnects']} | {s['meters_failed']} | {errors} |")
PY
  rm -rf "$dir"
}

if [ "$what" = idle ] || [ "$what" = all ]; then
  echo
  echo "| server | mode | idle connections | s to accept all | accepted/s | CONNACK ms p50 / p99 | RSS before MiB | RSS with all MiB | bytes per connection | restart s | storm: s until all back | reconnects | meters failed | server log errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for mode in auth tls; do
    for server in meterflow mosquitto; do
      idle_run "$server" "$mode"
    done
  done
fi
