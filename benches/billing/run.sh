#!/usr/bin/env bash
# The billing benchmark of issue 21: `meterflow query billing` on the Parquet tree and on
# ClickHouse 18.16, with and without a time-of-use tariff, beside DuckDB computing the same
# totals over the same Parquet files. Results: benches/RESULTS.md, "Billing a month".
#
#   benches/billing/run.sh [RUNS]      (default 3 runs of each path, back to back)
#
# Environment:
#   BENCH_DATA   where the data goes (default /work/bench-data/billing; deleted at the end
#                unless KEEP_DATA=1; a complete tree there from an earlier KEEP_DATA=1 run is
#                used again)
#   CH_URL       a ClickHouse to use (a database of its own, dropped at the end) instead of a
#                private 18.16 (deploy/clickhouse-test.sh) under BENCH_DATA; the server's CPU
#                is then taken from system.query_log instead of /proc
#   CARGO_TARGET_DIR as cargo
#
# Data (benches/benches/billing_data.rs): 10 000 meters × 2 registers × 15-minute reads from
# 2026-02-26 to 2026-04-03 UTC, with gaps and resets, as the sink's Parquet tree and in
# ClickHouse. Each run is timed with /usr/bin/time -v (wall, user + sys CPU, peak RSS); the
# outputs are checked: ClickHouse's bill equal to Parquet's, DuckDB's totals equal to
# meterflow's within 1e-6 kWh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
data=${BENCH_DATA:-/work/bench-data/billing}
target=${CARGO_TARGET_DIR:-$root/target}
meterflow=$target/release/meterflow
tariff=$root/deploy/examples/billing/residential-2026.toml
period=(--from 2026-03-01 --to 2026-04-01 --tz Europe/Berlin)
from_ms=1772319600000 # 2026-03-01T00:00+01:00
to_ms=1774994400000   # 2026-04-01T00:00+02:00
. "$root/benches/billing/data.sh"

bill=("$meterflow" --config "$data/meterflow.toml" query billing --format csv "${period[@]}")

printf 'path\trun\twall_s\tuser_s\tsys_s\tpeak_rss_mb\tserver_cpu_s\tload1\n' | tee "$results"
for run in $(seq "$runs"); do
  timed parquet "$run" "${bill[@]}" --data-dir "$data/tree"
  timed parquet-tariff "$run" "${bill[@]}" --data-dir "$data/tree" --tariff "$tariff"
  timed clickhouse "$run" "${bill[@]}" --clickhouse-url "$url"
  timed clickhouse-tariff "$run" "${bill[@]}" --clickhouse-url "$url" --tariff "$tariff"
  timed duckdb "$run" python3 "$root/benches/billing/duckdb_total.py" "$data/tree" "$from_ms" "$to_ms" "$data/out/duckdb-$run.result.csv"
done

# The answers: ClickHouse's equal to Parquet's, DuckDB's totals equal to meterflow's.
cmp "$data/out/parquet-1.csv" "$data/out/clickhouse-1.csv"
cmp "$data/out/parquet-tariff-1.csv" "$data/out/clickhouse-tariff-1.csv"
echo "ClickHouse's bills are byte for byte Parquet's"
python3 - "$data/out/parquet-1.csv" "$data/out/duckdb-1.result.csv" "$data/out/parquet-tariff-1.csv" <<'PY'
import csv, sys
mf = {(r["meter_id"], r["channel"]): float(r["consumption"]) for r in csv.DictReader(open(sys.argv[1]))}
dd = {(r["meter_id"], r["channel"]): float(r["consumption"]) for r in csv.DictReader(open(sys.argv[2]))}
assert mf.keys() == dd.keys(), f"series differ: {len(mf)} against {len(dd)}"
worst = max(abs(mf[k] - dd[k]) for k in mf)
assert worst <= 1e-6, f"largest difference {worst}"
# The tariff's periods add up to the total.
periods = {}
for r in csv.DictReader(open(sys.argv[3])):
    k = (r["meter_id"], r["channel"])
    periods[k] = periods.get(k, 0.0) + float(r["consumption"])
spread = max(abs(periods[k] - mf[k]) for k in mf)
assert spread <= 1e-5, f"periods differ from the total by {spread}"
print(f"DuckDB's totals equal meterflow's: {len(mf)} series, largest difference {worst:.2e} kWh;"
      f" tariff periods add up to the total within {spread:.2e} kWh")
PY

# Medians per path, and the ratio of wall time to DuckDB's.
python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
paths = list(dict.fromkeys(r["path"] for r in rows))
med = lambda p, k: statistics.median(float(r[k]) for r in rows if r["path"] == p)
duck = med("duckdb", "wall_s")
print("| path | wall s | CPU s (user + sys) | peak RSS MB | server CPU s | wall / DuckDB |")
print("|---|---|---|---|---|---|")
for p in paths:
    cpu = statistics.median(float(r["user_s"]) + float(r["sys_s"]) for r in rows if r["path"] == p)
    server = med(p, "server_cpu_s") if p.startswith("clickhouse") else "-"
    print(f"| {p} | {med(p, 'wall_s'):.2f} | {cpu:.2f} | {med(p, 'peak_rss_mb'):.0f} | {server} | {med(p, 'wall_s') / duck:.2f} |")
PY
