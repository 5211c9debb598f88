#!/usr/bin/env bash
# Runs benches/benches/clickhouse_sink.rs against a private ClickHouse (deploy/clickhouse-test.sh):
# the sink, `meterflow import` and clickhouse-client loading the same rows, side by side.
#   benches/clickhouse_sink.sh [ROWS,ROWS...]     (default 2000000,10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-2000000,10000000}
cargo build --release --bin meterflow
dir=$(mktemp -d)
trap 'deploy/clickhouse-test.sh stop "$dir"; rm -rf "$dir"' EXIT
METERFLOW_BENCH_CLICKHOUSE_URL=$(deploy/clickhouse-test.sh start "$dir")
METERFLOW_BENCH_CLICKHOUSE_PORT=$(sed -n 's#.*<tcp_port>\([0-9]*\)</tcp_port>.*#\1#p' "$dir/config.xml")
METERFLOW_BENCH_CLICKHOUSE_DIR=$dir
METERFLOW_BIN=$PWD/target/release/meterflow
METERFLOW_BENCH_ROWS=$rows
export METERFLOW_BENCH_CLICKHOUSE_URL METERFLOW_BENCH_CLICKHOUSE_PORT METERFLOW_BENCH_CLICKHOUSE_DIR METERFLOW_BIN METERFLOW_BENCH_ROWS
nproc; grep -m1 'model name' /proc/cpuinfo || true
cargo bench -p meterflow-benches --bench clickhouse_sink
