#!/usr/bin/env bash
# Inserting into a ClickHouse cluster (deploy/cluster/up.sh: 2 shards x 2 replicas, all on
# this machine) two ways, the same rows each time:
#   distributed: one INSERT into the Distributed `readings` of server 1-1 with
#                insert_distributed_sync = 1 (what the sink does): that server writes shard 1's
#                rows and forwards shard 2's to a replica of shard 2, then answers;
#   direct:      the rows split by cityHash64(meter_id) % 2 beforehand (the split is not
#                timed), one INSERT per shard into its `readings_local` on replica 1, both at once.
# Each run goes into a fresh database (made ON CLUSTER by `meterflow schema --apply`). Timed
# from the first byte sent to every replica in sync (SYSTEM SYNC REPLICA), so replication is
# in; CPU is every clickhouse-server's utime + stime over that time.
#   benches/cluster_insert.sh [ROWS] [RUNS]     (default 2000000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-2000000}
runs=${2:-3}
bin=${METERFLOW_BIN:-target/release/meterflow}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
trap 'deploy/cluster/ctl.sh "$work/cluster" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
METERFLOW_BIN=$bin deploy/cluster/up.sh "$work/cluster" 1 >/dev/null
# shellcheck disable=SC1091
. "$work/cluster/cluster.env"
hz=$(getconf CLK_TCK)
q() { curl -fsS "$1" --data-binary "$2"; }
ticks() {
  local t=0
  for pidfile in "$work"/cluster/clickhouse-*/pid; do
    t=$((t + $(awk '{print $14+$15}' "/proc/$(cat "$pidfile")/stat")))
  done
  echo "$t"
}
now() { date +%s.%N; }

# The rows: 4 registers per meter and quarter hour, as the sink bench makes them.
meters=$((rows / 4 / 96 + 1))
select="SELECT concat('E', toString(10000000 + m)) AS meter_id,
  arrayElement(['1-0:1.8.0','1-0:2.8.0','1-0:1.7.0','1-0:32.7.0'], c + 1) AS channel,
  toDateTime(1719792000 + q * 900) AS ts, toFloat64(m * 10 + q * 0.25) AS value, 'kWh' AS unit,
  toUInt16(0) AS quality, toDateTime(1719792000 + q * 900 + 30) AS received_at,
  'mqtt' AS source, 'pb' AS format
  FROM (SELECT number % $meters AS m, intDiv(number, $meters) % 4 AS c,
        intDiv(number, $meters * 4) AS q FROM numbers($rows))"
q "$CLICKHOUSE_URL" "$select FORMAT Native" >"$work/all.native"
for s in 1 2; do
  q "$CLICKHOUSE_URL" "SELECT * FROM ($select) WHERE cityHash64(meter_id) % 2 = $((s - 1)) FORMAT Native" \
    >"$work/shard$s.native"
done

schema() { # database
  printf '[clickhouse]\nurl = "%s"\ncluster = "meterflow"\ndatabase = "%s"\n' "$CLICKHOUSE_URL" "$1" \
    >"$work/schema.toml"
  "$bin" schema --apply --config "$work/schema.toml" >/dev/null
}
in_sync() { # database
  for s in 1 2; do
    for r in 1 2; do
      url=CLICKHOUSE_${s}_${r}_URL
      q "${!url}" "SYSTEM SYNC REPLICA $1.readings_local" >/dev/null
    done
  done
}

echo "| run | way | rows | s | rows/s | servers' CPU s | CPU µs/row |"
echo "|---|---|---|---|---|---|---|"
for run in $(seq "$runs"); do
  for way in distributed direct; do
    db="bench_${way}_$run"
    schema "$db"
    sleep 1
    before=$(ticks); start=$(now)
    if [ "$way" = distributed ]; then
      curl -fsS "$CLICKHOUSE_URL/?query=INSERT%20INTO%20$db.readings%20FORMAT%20Native&insert_distributed_sync=1" \
        --data-binary "@$work/all.native"
    else
      curl -fsS "$CLICKHOUSE_1_1_URL/?query=INSERT%20INTO%20$db.readings_local%20FORMAT%20Native" \
        --data-binary "@$work/shard1.native" &
      curl -fsS "$CLICKHOUSE_2_1_URL/?query=INSERT%20INTO%20$db.readings_local%20FORMAT%20Native" \
        --data-binary "@$work/shard2.native"
      wait
    fi
    in_sync "$db"
    end=$(now); used=$(( $(ticks) - before ))
    n=$(q "$CLICKHOUSE_URL" "SELECT count() FROM $db.readings")
    [ "$n" = "$rows" ] || { echo "$way: $n rows, not $rows" >&2; exit 1; }
    awk -v run="$run" -v way="$way" -v n="$n" -v s="$start" -v e="$end" -v t="$used" -v hz="$hz" \
      'BEGIN { d = e - s; printf "| %d | %s | %d | %.2f | %.0f | %.2f | %.2f |\n", run, way, n, d, n / d, t / hz, t / hz / n * 1e6 }'
  done
done
