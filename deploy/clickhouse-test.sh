#!/usr/bin/env bash
# A private ClickHouse server for the tests: Debian's clickhouse-server (installed with apt as
# root where missing), its own data folder and free loopback ports, so it never touches a
# system instance.
#
#   deploy/clickhouse-test.sh start DIR   starts it, waits until it answers, prints its HTTP URL
#                                         (again after a stop: same ports, same data)
#   deploy/clickhouse-test.sh stop DIR    stops it
#   deploy/clickhouse-test.sh kill DIR    kills it at once (an outage, for the tests)
#   deploy/clickhouse-test.sh config DIR HTTP TCP INTERSERVER [XML]
#                                         writes DIR's config.xml and users.xml only: the
#                                         packaged config on those ports, XML added at its end
#                                         (deploy/cluster/up.sh makes its servers with it)
# Users: the packaged `default` (no password), and `meterflow_test` with the password
# `Meter-flow@test:42` (users.d/meterflow-test.xml) for the tests of clickhouse.user/password.
set -euo pipefail
cmd=${1:?usage: clickhouse-test.sh start|stop DIR}
dir=${2:?usage: clickhouse-test.sh start|stop DIR}

# The packaged config with our ports and paths, no IPv6 listener (absent in some sandboxes),
# errors only in the log, and extra XML before its end.
write_config() { # DIR HTTP TCP INTERSERVER [XML]
  sed -e "s#<http_port>8123</http_port>#<http_port>$2</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$3</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$4</interserver_http_port>#" \
      -e "s#<https_port>8443</https_port>##" \
      -e "s#<tcp_port_secure>9440</tcp_port_secure>##" \
      -e "s#<listen_host>::1</listen_host>##" \
      -e "s#/var/lib/clickhouse/#$1/data/#g" \
      -e "s#/var/log/clickhouse-server/#$1/log/#g" \
      -e "s#<level>warning</level>#<level>error</level>#" \
      -e "s#</yandex>#${5:-}</yandex>#" \
      /etc/clickhouse-server/config.xml > "$1/config.xml"
  cp /etc/clickhouse-server/users.xml "$1/users.xml"
  # A user with a password for the login tests (tests/it/clickhouse_access.rs), beside the
  # packaged `default` without one; its queries go to system.query_log, so a test can see
  # which user the server took an insert from.
  mkdir -p "$1/users.d"
  cat > "$1/users.d/meterflow-test.xml" <<'XML'
<yandex>
  <profiles>
    <meterflow_test>
      <log_queries>1</log_queries>
    </meterflow_test>
  </profiles>
  <users>
    <meterflow_test>
      <password>Meter-flow@test:42</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>meterflow_test</profile>
      <quota>default</quota>
    </meterflow_test>
  </users>
</yandex>
XML
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    echo "installing clickhouse-server (Debian package) for the tests" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      clickhouse-server clickhouse-client >&2
  fi
  mkdir -p "$dir/data" "$dir/log"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/config.xml" ]; then
    http=$(sed -n 's#.*<http_port>\([0-9]*\)</http_port>.*#\1#p' "$dir/config.xml")
  else
  http=$(free_port); tcp=$(free_port); inter=$(free_port)
  write_config "$dir" "$http" "$tcp" "$inter"
  fi
  clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 300); do
    if curl -fsS "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$http"
      exit 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "clickhouse-server exited:" >&2
      tail -20 "$dir/log/stdout.log" "$dir/log/clickhouse-server.err.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  echo "clickhouse-server did not answer on port $http" >&2
  exit 1
  ;;
config)
  mkdir -p "$dir/data" "$dir/log"
  write_config "$(cd "$dir" && pwd)" "${3:?HTTP port}" "${4:?TCP port}" "${5:?interserver port}" "${6:-}"
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
  ;;
kill)
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/pid"
  fi
  ;;
*)
  echo "usage: clickhouse-test.sh start|stop|kill DIR" >&2
  exit 2
  ;;
esac
