#!/usr/bin/env bash
# `meterflow import` of a Parquet tree beside clickhouse-client loading the same rows from a
# Native file, taking turns three times on one private ClickHouse (deploy/clickhouse-test.sh):
#   benches/import.sh [ROWS,ROWS...]     (default 2000000,10000000)
# The rows, the tree and the measures are those of benches/clickhouse_sink.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
METERFLOW_BENCH_IMPORT_ONLY=1 exec benches/clickhouse_sink.sh "${1:-2000000,10000000}"
