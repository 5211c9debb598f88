#!/usr/bin/env bash
# The local cluster harness: the whole production shape on one machine, from Debian packages.
#   deploy/cluster/up.sh DIR [NODES]   starts it in DIR (NODES meterflow nodes, 2 by default)
#                                      and writes DIR/cluster.env
#
# What it starts (each on free loopback ports; state and logs under DIR):
#   - ZooKeeper, standalone (`zookeeper` package; the admin server off, so port 8080 stays free);
#   - 4 clickhouse-server processes: cluster `meterflow` of 2 shards x 2 replicas
#     (internal_replication, macros {shard} and {replica}), coordinated by that ZooKeeper;
#   - NODES `meterflow serve` nodes (node.id mf-N, clickhouse.cluster = "meterflow"), each
#     with its own data folder; the binary is $METERFLOW_BIN, else `meterflow` on the PATH;
#   - HAProxy in TCP mode in front of their MQTT listeners, plain and TLS (passed through: the
#     node terminates TLS and sees the client certificate; certificates made with openssl under
#     DIR/tls), health-checked on `GET /ready?ingest`, redispatching a connection a dead or
#     stopping node refuses; every connection reaches a node from HAProxy's address, so the
#     nodes' mqtt.max_pending_per_address is their whole pending budget;
#   - nginx `stream` in front of their CoAP (UDP) listeners, hashed by the client's address
#     and port, so that one device's exchanges (and later its DTLS session) stay on one node.
# DIR/cluster.env: MQTT, MQTT_TLS and COAP (host:port of the load balancers), TLS_CA,
# TLS_CLIENT_CERT and TLS_CLIENT_KEY (a client certificate for meter tls-meter-1), NODES,
# NODE_<N>_HTTP, NODE_<N>_MQTT and NODE_<N>_MQTT_TLS (each node's own), CLICKHOUSE_URL (replica
# 1 of shard 1), CLICKHOUSE_<S>_<R>_URL and _PORT (HTTP and native port of each server),
# ZOOKEEPER, CLUSTER. deploy/cluster/ctl.sh DIR ... operates on it (kill-node, stop-node,
# start-node, kill-replica, start-replica, down).
# This machine has 2 cores: the harness proves failover, not speed.
set -euo pipefail
dir=${1:?usage: deploy/cluster/up.sh DIR [NODES]}
nodes=${2:-2}
bin=${METERFLOW_BIN:-$(command -v meterflow || true)}
[ -x "$bin" ] || { echo "set METERFLOW_BIN to the meterflow binary (none on the PATH)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
missing=()
need clickhouse-server clickhouse-server
need clickhouse-client clickhouse-client
need java default-jre-headless
need python3 python3
need curl curl
need haproxy haproxy
need nginx nginx-light
need openssl openssl
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the cluster harness" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Ports outside the ephemeral range, so a node killed in a failover test finds its own
# free again when it restarts (deploy/clickhouse-test.sh says why).
free_port() {
  "$here/../clickhouse-test.sh" port
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
    inter=$(free_port)
    # A replica killed with kill -9 comes back with parts ZooKeeper never heard of; on the
    # harness's small tables they can be all of a table's rows, which the start-up check
    # (replicated_max_ratio_of_wrong_parts, 0.5) refuses. Here 1: such parts are set aside
    # (detached) and fetched again from the other replica. Production tables keep the default.
    "$here/../clickhouse-test.sh" config "$node" "${http[$s$r]}" "${tcp[$s$r]}" "$inter" \
      "<include_from>$node/cluster.xml</include_from><interserver_http_host>127.0.0.1</interserver_http_host><merge_tree><replicated_max_ratio_of_wrong_parts>1</replicated_max_ratio_of_wrong_parts></merge_tree>"
    cat > "$node/cluster.xml" <<XML
<yandex>
  <clickhouse_remote_servers><meterflow>$shards</meterflow></clickhouse_remote_servers>
  <zookeeper-servers><node><host>127.0.0.1</host><port>$zk_port</port></node><session_timeout_ms>5000</session_timeout_ms></zookeeper-servers>
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
# Every server sees the whole cluster.
n=$(curl -fsS "http://127.0.0.1:${http[11]}/" --data-binary "SELECT count() FROM system.clusters WHERE cluster = 'meterflow'")
[ "$n" = 4 ] || { echo "cluster meterflow has $n replicas on 1-1, not 4" >&2; exit 1; }
# The schema, once, ON CLUSTER (the nodes would each try it while it is missing).
cat > "$dir/schema.toml" <<TOML
[clickhouse]
url = "http://127.0.0.1:${http[11]}"
cluster = "meterflow"
TOML
"$bin" schema --apply --config "$dir/schema.toml" >/dev/null

# --- meterflow nodes ----------------------------------------------------------------------
# TLS for MQTT, passed through HAProxy so that each node terminates it and sees the client's
# certificate: a CA, the nodes' certificate (for 127.0.0.1) and one meter's client certificate
# (CN tls-meter-1), all made here with openssl.
tls="$dir/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$tls/ca.key" -out "$tls/ca.pem" -subj "/CN=meterflow harness CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for leaf in node tls-meter-1; do
  cn=$leaf; [ "$leaf" = node ] && cn=127.0.0.1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/$leaf.key" \
    -out "$tls/$leaf.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >"$tls/$leaf.ext"
  openssl x509 -req -in "$tls/$leaf.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -out "$tls/$leaf.pem" -days 30 -extfile "$tls/$leaf.ext" 2>/dev/null
done

mqtt_backends=""
mqtt_tls_backends=""
coap_backends=""
servers=(11 12 21 22)
for i in $(seq "$nodes"); do
  node="$dir/node-$i"
  # Each node inserts through its own server of the cluster, in turn.
  via=${servers[$(( (i - 1) % 4 ))]}
  mkdir -p "$node"
  mqtt=$(free_port); mqtt_tls=$(free_port); http_port=$(free_port); coap=$(free_port)
  cat > "$node/meterflow.toml" <<TOML
data_dir = "$node/data"
[node]
id = "mf-$i"
[clickhouse]
url = "http://127.0.0.1:${http[$via]}"
cluster = "meterflow"
retry_initial_ms = 100
retry_max_ms = 2000
[mqtt]
tls_listen = "127.0.0.1:$mqtt_tls"
tls_cert = "$tls/node.pem"
tls_key = "$tls/node.key"
tls_client_ca = "$tls/ca.pem"
# Behind HAProxy in TCP mode every connection comes from HAProxy's address: a per-address
# cap below the pending budget would be the whole budget's limit (and nothing is evicted
# for a newcomer: one address). Per-source limits belong to HAProxy here.
max_pending_connections = 4096
max_pending_per_address = 4096
TOML
  cat > "$node/run" <<RUN
exec "$bin" serve --config "$node/meterflow.toml" --mqtt-listen 127.0.0.1:$mqtt \
  --mqtt-v5-listen off --coap-listen 127.0.0.1:$coap --http-listen 127.0.0.1:$http_port
RUN
  echo "NODE_${i}_MQTT=127.0.0.1:$mqtt" >> "$env_file.tmp"
  echo "NODE_${i}_MQTT_TLS=127.0.0.1:$mqtt_tls" >> "$env_file.tmp"
  echo "NODE_${i}_HTTP=127.0.0.1:$http_port" >> "$env_file.tmp"
  mqtt_backends+="    server mf-$i 127.0.0.1:$mqtt check port $http_port"$'\n'
  mqtt_tls_backends+="    server mf-$i 127.0.0.1:$mqtt_tls check port $http_port"$'\n'
  coap_backends+="    server 127.0.0.1:$coap;"$'\n'
  "$here/ctl.sh" "$dir" start-node "$i"
done

# --- HAProxy (MQTT, TCP) and nginx stream (CoAP, UDP) --------------------------------------
lb_mqtt=$(free_port); lb_mqtt_tls=$(free_port); lb_coap=$(free_port)
cat > "$dir/haproxy.cfg" <<CFG
global
    maxconn 5000
defaults
    mode tcp
    timeout connect 2s
    timeout check 3s
    # Longer than a battery meter's MQTT keep-alive.
    timeout client 2h
    timeout server 2h
    retries 2
    option redispatch
    # Every backend: the node that has the fewest connections, if /ready?ingest says so.
    balance leastconn
    option httpchk
    http-check send meth GET uri /ready?ingest
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
frontend mqtt
    bind 127.0.0.1:$lb_mqtt
    default_backend meterflow_mqtt
backend meterflow_mqtt
$mqtt_backends
# TLS passed through (TCP mode, no certificate here): the node terminates it and sees the
# client's certificate.
frontend mqtt_tls
    bind 127.0.0.1:$lb_mqtt_tls
    default_backend meterflow_mqtt_tls
backend meterflow_mqtt_tls
$mqtt_tls_backends
CFG
haproxy -f "$dir/haproxy.cfg" -D -p "$dir/haproxy.pid" 2>"$dir/haproxy.log"
mkdir -p "$dir/nginx"
cat > "$dir/nginx/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon on;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
stream {
  upstream meterflow_coap {
    hash \$remote_addr\$remote_port consistent;
$coap_backends  }
  server {
    listen 127.0.0.1:$lb_coap udp;
    proxy_pass meterflow_coap;
    proxy_timeout 60s;
  }
}
CFG
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
{
  echo "MQTT=127.0.0.1:$lb_mqtt"
  echo "MQTT_TLS=127.0.0.1:$lb_mqtt_tls"
  echo "TLS_CA=$tls/ca.pem"
  echo "TLS_CLIENT_CERT=$tls/tls-meter-1.pem"
  echo "TLS_CLIENT_KEY=$tls/tls-meter-1.key"
  echo "COAP=127.0.0.1:$lb_coap"
  echo "NODES=$nodes"
} >> "$env_file.tmp"
# Every node answers /ready?ingest (what HAProxy checks).
for i in $(seq "$nodes"); do
  wait_for "node $i behind HAProxy" curl -fsS "http://$(sed -n "s/^NODE_${i}_HTTP=//p" "$env_file.tmp")/ready?ingest"
done
mv "$env_file.tmp" "$env_file"
cat "$env_file"
