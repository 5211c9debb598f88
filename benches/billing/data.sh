# The readings of the billing benchmark, for the scripts that time questions on them
# (benches/billing/run.sh, benches/vee/run.sh): sourced, with `root` and `data` set. It builds
# the release binary, starts a private ClickHouse 18.16 under $data/ch (or uses CH_URL, in a
# database of its own), generates the data once (benches/benches/billing_data.rs; a complete
# tree and database of an earlier KEEP_DATA=1 run are used again) and defines:
#   ch SQL                      a query to that ClickHouse
#   timed NAME RUN command...   one timed run (/usr/bin/time -v; the server's CPU from /proc or
#                               system.query_log) appended to $results; the command's output
#                               goes to $data/out/NAME-RUN.csv
# The data is deleted on exit unless KEEP_DATA=1.
mkdir -p "$data/out"
results=${results:-$data/results.tsv}

cd "$root"
cargo build --release --locked -q

# ClickHouse: a private server, or a database of our own on CH_URL.
if [ -n "${CH_URL:-}" ]; then
  url=$CH_URL
  db=bench_billing_$$
  server_pid=""
else
  url=$("$root/deploy/clickhouse-test.sh" start "$data/ch" | tail -1)
  db=meterflow
  server_pid=$(cat "$data/ch/pid")
fi
ch() { curl -sS --fail-with-body "$url/" --data-binary "$1"; }
cleanup() {
  if [ -n "${CH_URL:-}" ]; then
    ch "DROP DATABASE IF EXISTS $db" || true
  else
    "$root/deploy/clickhouse-test.sh" stop "$data/ch" || true
  fi
  if [ "${KEEP_DATA:-0}" != 1 ]; then rm -rf "$data"; fi
}
trap cleanup EXIT
printf '[clickhouse]\ndatabase = "%s"\n' "$db" >"$data/meterflow.toml"

# The data, once (a tree and a filled database of an earlier KEEP_DATA=1 run are kept).
rows=$(ch "SELECT count() FROM system.tables WHERE database = '$db' AND name = 'readings'")
if [ -f "$data/tree/complete" ] && [ "$rows" = 1 ]; then
  echo "using the data under $data"
else
  rm -rf "$data/tree"
  ch "DROP DATABASE IF EXISTS $db"
  ch "CREATE DATABASE $db"
  cargo bench -q --locked -p meterflow-benches --bench billing_data -- write "$data/tree" "$url" "$db"
  touch "$data/tree/complete"
fi
echo "rows: Parquet $(python3 -c "import duckdb,sys; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('$data/tree/readings/date=*/*.parquet')\").fetchall()[0][0])"), ClickHouse $(ch "SELECT count() FROM $db.readings")"
du -sh "$data/tree/readings" | sed 's/^/Parquet size: /'
# Let ClickHouse finish merging what the inserts left before anything is timed.
while [ "$(ch "SELECT count() FROM system.merges WHERE database = '$db'")" != 0 ]; do sleep 2; done
ch "SELECT 'ClickHouse parts', count(), formatReadableSize(sum(bytes_on_disk)) FROM system.parts WHERE database = '$db' AND table = 'readings' AND active FORMAT TSV"

# The server's CPU (ticks of 1/100 s) from /proc, or its queries' from system.query_log.
server_ticks() {
  [ -n "$server_pid" ] || { echo 0; return; }
  awk '{print $14 + $15}' "/proc/$server_pid/stat"
}

# One timed run: NAME RUN command...; the tool's output goes to out/NAME-RUN.csv.
timed() {
  local name=$1 run=$2; shift 2
  local out=$data/out/$name-$run.csv log=$data/out/$name-$run.time
  local load before after server
  load=$(cut -d' ' -f1 /proc/loadavg)
  before=$(server_ticks)
  /usr/bin/time -v -o "$log" "$@" >"$out"
  after=$(server_ticks)
  server=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", (b - a) / 100 }')
  if [ -n "${CH_URL:-}" ] && [[ $name == clickhouse* ]]; then
    ch "SYSTEM FLUSH LOGS"
    server=$(ch "SELECT round(sum(query_duration_ms) / 1000, 2) FROM system.query_log WHERE type = 2 AND event_time >= now() - 600 AND query LIKE '%FROM $db.readings%' AND query NOT LIKE '%system.query_log%'")
  fi
  awk -v name="$name" -v run="$run" -v load="$load" -v server="$server" -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, p, ":"); wall = (n == 3) ? p[1] * 3600 + p[2] * 60 + p[3] : p[1] * 60 + p[2] }
    /User time/ { user = $2 } /System time/ { sys = $2 } /Maximum resident/ { rss = $2 }
    END { printf "%s\t%s\t%.2f\t%.2f\t%.2f\t%.0f\t%s\t%s\n", name, run, wall, user, sys, rss / 1024, server, load }
  ' "$log" | tee -a "$results"
}

