#!/usr/bin/env bash
# The VEE benchmark of issue 23: `meterflow vee` on the Parquet tree and on ClickHouse 18.16,
# over the readings of the billing benchmark (benches/billing/data.sh: 10 000 meters × 2
# registers × 15-minute reads, 36 days, 69 M rows). Results: benches/RESULTS.md, "VEE".
#
#   benches/vee/run.sh [RUNS]      (default 3 runs of each path)
#
# Environment: BENCH_DATA (default /work/bench-data/billing, shared with the billing benchmark;
# KEEP_DATA=1 keeps it), CH_URL, CARGO_TARGET_DIR, as benches/billing/run.sh.
#
# Paths, each timed under /usr/bin/time -v (wall, user + sys CPU, peak RSS):
#   month   vee over March 2026 (Europe/Berlin, 31 days), with no earlier run: it reads every
#           reading (the month, and the history before it as far as the data goes) and
#           stores its estimates as the first version, its run and its exceptions;
#   again   the same once more: the same answer, nothing new written;
#   week    vee over 2026-03-25 to 2026-04-01 (7 days);
#   day     vee over 2026-03-31 alone, as `vee.schedule` runs it every night: the day and its
#           31 days of history (all the data before it, here).
# Before each `month` the VEE tables and folders are emptied. The answers are checked: the
# exceptions from ClickHouse equal those from Parquet, byte for byte.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
data=${BENCH_DATA:-/work/bench-data/billing}
target=${CARGO_TARGET_DIR:-$root/target}
meterflow=$target/release/meterflow
results=$data/vee-results.tsv
. "$root/benches/billing/data.sh"

"$meterflow" schema --apply --clickhouse-url "$url" --config "$data/meterflow.toml" >/dev/null
fresh() {
  rm -rf "$data/tree/readings_vee" "$data/tree/vee_runs" "$data/tree/vee_exceptions"
  for t in readings_vee vee_runs vee_exceptions; do ch "TRUNCATE TABLE $db.$t"; done
}
vee=("$meterflow" --config "$data/meterflow.toml" vee --format csv --tz Europe/Berlin)
month=(--from 2026-03-01 --to 2026-04-01)
week=(--from 2026-03-25 --to 2026-04-01)
day=(--from 2026-03-31 --to 2026-04-01)

printf 'path\trun\twall_s\tuser_s\tsys_s\tpeak_rss_mb\tserver_cpu_s\tload1\n' | tee "$results"
for run in $(seq "$runs"); do
  fresh
  for source in parquet clickhouse; do
    if [ "$source" = parquet ]; then where=(--data-dir "$data/tree"); else where=(--clickhouse-url "$url"); fi
    timed "$source-month" "$run" "${vee[@]}" "${month[@]}" "${where[@]}"
    timed "$source-again" "$run" "${vee[@]}" "${month[@]}" "${where[@]}"
    timed "$source-week" "$run" "${vee[@]}" "${week[@]}" "${where[@]}"
    timed "$source-day" "$run" "${vee[@]}" "${day[@]}" "${where[@]}"
  done
done

for path in month again week day; do
  cmp "$data/out/parquet-$path-1.csv" "$data/out/clickhouse-$path-1.csv"
done
echo "ClickHouse's exceptions are byte for byte Parquet's"
python3 - "$data/out/parquet-month-1.csv" "$data/out/parquet-day-1.csv" <<'PY'
import collections, csv, sys
for name in sys.argv[1:]:
    rows = list(csv.DictReader(open(name)))
    rules = collections.Counter(r["rule"] for r in rows)
    mended = sum(int(r["values"]) for r in rows)
    print(f"{name.rsplit('/', 1)[-1]}: {len(rows)} exceptions ({dict(sorted(rules.items()))}), {mended} values estimated or substituted")
PY
python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
paths = list(dict.fromkeys(r["path"] for r in rows))
med = lambda p, k: statistics.median(float(r[k]) for r in rows if r["path"] == p)
print("| path | wall s | CPU s (user + sys) | peak RSS MB | server CPU s |")
print("|---|---|---|---|---|")
for p in paths:
    cpu = statistics.median(float(r["user_s"]) + float(r["sys_s"]) for r in rows if r["path"] == p)
    server = med(p, "server_cpu_s") if p.startswith("clickhouse") else "-"
    print(f"| {p} | {med(p, 'wall_s'):.2f} | {cpu:.2f} | {med(p, 'peak_rss_mb'):.0f} | {server} |")
PY
