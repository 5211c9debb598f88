#!/usr/bin/env bash
# A private ClickHouse server for the tests: Debian's clickhouse-server (installed with apt as
# root where missing), its own data folder and free loopback ports, so it never touches a
# system instance.
#
#   deploy/clickhouse-test.sh start DIR   starts it, waits until it answers, prints its HTTP URL
#                                         (again after a stop: same ports, same data)
#   deploy/clickhouse-test.sh stop DIR    stops it
#   deploy/clickhouse-test.sh kill DIR    kills it at once (an outage, for the tests)
#   deploy/clickhouse-test.sh port        prints a free loopback port outside the kernel's
#                                         ephemeral range, so that no outgoing connection
#                                         takes it while the server is down for a test
#   deploy/clickhouse-test.sh config DIR HTTP TCP INTERSERVER [XML]
#                                         writes DIR's config.xml and users.xml only: the
#                                         packaged config on those ports, XML added at its end
#                                         (deploy/cluster/up.sh makes its servers with it)
# Users: the packaged `default` (no password), and `meterflow_test` with the password
# `Meter-flow@test:42` (users.d/meterflow-test.xml) for the tests of clickhouse.user/password.
set -euo pipefail
cmd=${1:?usage: clickhouse-test.sh start|stop|kill DIR, config DIR ..., or port}
dir=${2:-}
[ "$cmd" = port ] || [ -n "$dir" ] || { echo "usage: clickhouse-test.sh $cmd DIR" >&2; exit 2; }

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

# A port the kernel never hands to an outgoing connection: a server killed for an outage
# test must find its ports free when it starts again, and with ports from the ephemeral
# range (what bind(0) gives) a test's client connection could be holding one by then.
free_port() {
  python3 - <<'PY'
import random, socket
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
except OSError:
    low, high = 32768, 60999
pool = list(range(20000, low)) + list(range(high + 1, 65536))
random.shuffle(pool)
for port in pool[:500] or [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
else:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
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
  # A port still held (by whatever took it while the server was down) is worth a few more
  # tries: ClickHouse 18.16 then logs "Address already in use" and runs on without that
  # listener, so it is killed and started again. A server that exits gets three tries,
  # each reported with the end of its logs.
  err_log="$dir/log/clickhouse-server.err.log"
  port_in_use() { tail -c +"$((errs_before + 1))" "$err_log" 2>/dev/null | grep -q "Address already in use"; }
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    errs_before=$(stat -c %s "$err_log" 2>/dev/null || echo 0)
    clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" > "$dir/pid"
    for _ in $(seq 300); do
      if curl -fsS -m 5 "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
        echo "http://127.0.0.1:$http"
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      port_in_use && break
      sleep 0.2
    done
    if port_in_use && [ "$attempt" -lt 10 ]; then
      echo "clickhouse-server: a port of $dir/config.xml is in use; trying again" >&2
      kill -9 "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      sleep 1
      continue
    fi
    if kill -0 "$pid" 2>/dev/null; then
      echo "clickhouse-server did not answer on port $http:" >&2
      tail -n 20 "$dir/log/stdout.log" "$err_log" >&2 || true
      exit 1
    fi
    echo "clickhouse-server exited (attempt $attempt):" >&2
    tail -n 20 "$dir/log/stdout.log" "$err_log" >&2 || true
    # A start right after a kill -9 has been seen to exit once on CI; a second try tells
    # a passing hiccup from a server that cannot start (whose logs are printed above).
    [ "$attempt" -lt 3 ] || exit 1
    sleep 1
  done
  ;;
config)
  mkdir -p "$dir/data" "$dir/log"
  write_config "$(cd "$dir" && pwd)" "${3:?HTTP port}" "${4:?TCP port}" "${5:?interserver port}" "${6:-}"
  ;;
port)
  free_port
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
  echo "usage: clickhouse-test.sh start|stop|kill DIR, config DIR ..., or port" >&2
  exit 2
  ;;
esac
