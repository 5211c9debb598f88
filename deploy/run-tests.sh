#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the real protocol clients and servers the
# tests drive (Debian packages, via apt as root where they are missing; paho-mqtt, chdb and
# gurux-dlms from PyPI), starts a private ClickHouse server (deploy/clickhouse-test.sh) for
# the tests and stops it afterwards, then runs every test of the workspace. CI (.ci/run) calls
# exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
trap 'echo "deploy/run-tests.sh: $(( $(date +%s) - started )) s wall time" >&2' EXIT

# command -> Debian package that provides it
declare -A needs=(
  [mosquitto_pub]=mosquitto-clients
  [mosquitto]=mosquitto
  [coap-client-notls]=libcoap3-bin
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [curl]=curl
  [python3]=python3
  [pip3]=python3-pip
  [openssl]=openssl
  [haproxy]=haproxy
  [prlimit]=util-linux
  [promtool]=prometheus
  [dpkg-shlibdeps]=dpkg-dev
  [objcopy]=binutils
  [adduser]=adduser
  [runuser]=util-linux
  [pkill]=procps
  [deb-systemd-helper]=init-system-helpers
)
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the tests" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Eclipse paho-mqtt: the independent MQTT 5 client of tests/it/mqtt_paho.rs (from PyPI).
if ! python3 -c 'import paho.mqtt.client' 2>/dev/null; then
  echo "installing paho-mqtt (PyPI) for the tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paho-mqtt>=2,<3'
fi

# chdb: a current ClickHouse engine in-process (Debian has only 18.16) for
# tests/it/clickhouse_current.rs: the schema, the writer's bodies and every query. Pinned, with
# its engine (chdb-core 26.9.0 is ClickHouse 26.9.2): the docs name the version tested, and a
# new engine must not change the suite overnight.
chdb_pins=('chdb==4.4.0' 'chdb-core==26.9.0')
if [ "$(python3 -c 'import chdb; print(chdb.__version__, chdb.engine_version)' 2>/dev/null)" != "4.4.0 26.9.2.1" ]; then
  echo "installing ${chdb_pins[*]} (PyPI) for the tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${chdb_pins[@]}" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${chdb_pins[@]}"
fi

# The tools whose Parquet files `meterflow import` must read (tests/it/import_foreign.rs
# writes its files with them). Pinned, as chdb is.
parquet_pins=('pandas==3.1.1' 'pyarrow==26.0.1' 'polars==2.1.0' 'duckdb==2.0.1')
if [ "$(python3 -c 'import pandas, pyarrow, polars, duckdb; print(pandas.__version__, pyarrow.__version__, polars.__version__, duckdb.__version__)' 2>/dev/null)" != "3.1.1 26.0.1 2.1.0 2.0.1" ]; then
  echo "installing ${parquet_pins[*]} (PyPI) for the tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check "${parquet_pins[@]}" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${parquet_pins[@]}"
fi

# Gurux DLMS for Python: the independent DLMS/COSEM implementation that makes the ciphered
# pushes of decoders/tests/dlms_roundtrip.rs (GPL-2.0: run as a test tool, nothing copied).
# Pinned: the test works around two defects of this version's block transfer and HDLC frames.
gurux_pin='gurux-dlms==1.0.203'
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("gurux-dlms"))' 2>/dev/null)" != "1.0.203" ]; then
  echo "installing $gurux_pin (PyPI) for the tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$gurux_pin" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$gurux_pin"
fi

# The house rules first: formatting and lints fail the run before any test does.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Build first, so that the server does not wait through the compile.
cargo test --workspace --all-targets --locked --no-run

clickhouse_dir=$(mktemp -d)
trap 'deploy/clickhouse-test.sh stop "$clickhouse_dir"; rm -rf "$clickhouse_dir"; echo "deploy/run-tests.sh: $(( $(date +%s) - started )) s wall time" >&2' EXIT
METERFLOW_TEST_CLICKHOUSE_URL=$(deploy/clickhouse-test.sh start "$clickhouse_dir")
export METERFLOW_TEST_CLICKHOUSE_URL
echo "ClickHouse for the tests: $METERFLOW_TEST_CLICKHOUSE_URL ($(curl -s "$METERFLOW_TEST_CLICKHOUSE_URL/?query=SELECT%20version()"))" >&2

# The Debian package test installs the package on this machine and removes it again: asked
# for as root only (CI runs as root), and it refuses a machine with a meterflow of its own.
if [ "$(id -u)" -eq 0 ]; then
  # METERFLOW_TEST_PACKAGE=0 in the environment leaves it out.
  : "${METERFLOW_TEST_PACKAGE:=1}"
  export METERFLOW_TEST_PACKAGE
else
  echo "not root: tests/it/package.rs (dpkg -i of the package) is not run" >&2
fi

cargo test --workspace --all-targets --locked
