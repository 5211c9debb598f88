#!/usr/bin/env bash
# Runs benches/benches/clickhouse_sink.rs against a private ClickHouse (deploy/clickhouse-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'deploy/clickhouse-test.sh stop "$dir"; rm -rf "$dir"' EXIT
METERFLOW_BENCH_CLICKHOUSE_URL=$(deploy/clickhouse-test.sh start "$dir")
METERFLOW_BENCH_CLICKHOUSE_PORT=$(sed -n 's#.*<tcp_port>\([0-9]*\)</tcp_port>.*#\1#p' "$dir/config.xml")
export METERFLOW_BENCH_CLICKHOUSE_URL METERFLOW_BENCH_CLICKHOUSE_PORT
cargo bench -p meterflow-benches --bench clickhouse_sink
