#!/usr/bin/env bash
# The local cluster harness: the whole production shape on one machine, from Debian packages.
#   deploy/cluster/up.sh DIR        starts it in DIR and writes DIR/cluster.env
#
# What it starts (each on free loopback ports; state and logs under DIR):
#   - ZooKeeper, standalone (`zookeeper` package; the admin server off, so port 8080 stays free);
#   - 4 clickhouse-server processes: cluster `meterflow` of 2 shards x 2 replicas
#     (internal_replication, macros {shard} and {replica}), coordinated by that ZooKeeper.
# DIR/cluster.env: CLICKHOUSE_URL (replica 1 of shard 1), CLICKHOUSE_<S>_<R>_URL and _PORT (HTTP
# and native port of each), ZOOKEEPER (host:port), CLUSTER (the cluster's name).
# deploy/cluster/ctl.sh DIR ... operates on it (kill-replica, start-replica, down).
# This machine has 2 cores: the harness proves failover, not speed.
set -euo pipefail
dir=${1:?usage: deploy/cluster/up.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
missing=()
need clickhouse-server clickhouse-server
need clickhouse-client clickhouse-client
need java default-jre-headless
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the cluster harness" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$what did not come up (logs in $dir)" >&2
  exit 1
}

# --- ZooKeeper -------------------------------------------------------------------------
zk_port=$(free_port)
mkdir -p "$dir/zookeeper/conf" "$dir/zookeeper/data"
cat > "$dir/zookeeper/conf/zoo.cfg" <<ZK
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$dir/zookeeper/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
ZK
"$here/ctl.sh" "$dir" start-zookeeper-at "$zk_port"

# --- ClickHouse: 2 shards x 2 replicas ------------------------------------------------------
declare -A http tcp
for s in 1 2; do
  for r in 1 2; do
    http[$s$r]=$(free_port); tcp[$s$r]=$(free_port)
  done
done
shards=""
for s in 1 2; do
  shards+="<shard><internal_replication>true</internal_replication>"
  for r in 1 2; do
    shards+="<replica><host>127.0.0.1</host><port>${tcp[$s$r]}</port></replica>"
  done
  shards+="</shard>"
done
env_file="$dir/cluster.env"
{
  echo "CLUSTER=meterflow"
  echo "ZOOKEEPER=127.0.0.1:$zk_port"
  echo "CLICKHOUSE_URL=http://127.0.0.1:${http[11]}"
} > "$env_file.tmp"
for s in 1 2; do
  for r in 1 2; do
    node="$dir/clickhouse-$s-$r"
    mkdir -p "$node/data" "$node/log"
    inter=$(free_port)
    sed -e "s#<http_port>8123</http_port>#<http_port>${http[$s$r]}</http_port>#" \
        -e "s#<tcp_port>9000</tcp_port>#<tcp_port>${tcp[$s$r]}</tcp_port>#" \
        -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$inter</interserver_http_port>#" \
        -e "s#<https_port>8443</https_port>##" \
        -e "s#<tcp_port_secure>9440</tcp_port_secure>##" \
        -e "s#<listen_host>::1</listen_host>##" \
        -e "s#/var/lib/clickhouse/#$node/data/#g" \
        -e "s#/var/log/clickhouse-server/#$node/log/#g" \
        -e "s#<level>trace</level>#<level>warning</level>#" \
        -e "s#</yandex>#<include_from>$node/cluster.xml</include_from><interserver_http_host>127.0.0.1</interserver_http_host></yandex>#" \
        /etc/clickhouse-server/config.xml > "$node/config.xml"
    cp /etc/clickhouse-server/users.xml "$node/users.xml"
    cat > "$node/cluster.xml" <<XML
<yandex>
  <clickhouse_remote_servers><meterflow>$shards</meterflow></clickhouse_remote_servers>
  <zookeeper-servers><node><host>127.0.0.1</host><port>$zk_port</port></node></zookeeper-servers>
  <macros><shard>$s</shard><replica>$s-$r</replica></macros>
</yandex>
XML
    echo "CLICKHOUSE_${s}_${r}_URL=http://127.0.0.1:${http[$s$r]}" >> "$env_file.tmp"
    echo "CLICKHOUSE_${s}_${r}_PORT=${tcp[$s$r]}" >> "$env_file.tmp"
    "$here/ctl.sh" "$dir" start-replica "$s" "$r" --no-wait
  done
done
for s in 1 2; do
  for r in 1 2; do
    wait_for "clickhouse-server $s-$r" curl -fsS "http://127.0.0.1:${http[$s$r]}/ping"
  done
done
mv "$env_file.tmp" "$env_file"
# Every server sees the whole cluster.
n=$(curl -fsS "http://127.0.0.1:${http[11]}/" --data-binary "SELECT count() FROM system.clusters WHERE cluster = 'meterflow'")
[ "$n" = 4 ] || { echo "cluster meterflow has $n replicas on 1-1, not 4" >&2; exit 1; }
cat "$env_file"
