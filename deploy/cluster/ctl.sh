#!/usr/bin/env bash
# Operates the harness deploy/cluster/up.sh started in DIR. Shards and replicas count from 1;
# kill-* is kill -9.
#   ctl.sh DIR kill-node N | stop-node N | start-node N | kill-replica S R | start-replica S R | down
set -euo pipefail
dir=$(cd "${1:?usage: ctl.sh DIR command}" && pwd)
cmd=${2:?usage: ctl.sh DIR kill-replica S R | start-replica S R | down}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# kill -9 the process of a pid file, wait until it is gone, forget the pid.
kill_9() {
  if pid_alive "$1"; then
    local pid
    pid=$(cat "$1")
    kill -9 "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$1"
}

case "$cmd" in
start-zookeeper-at) # used by up.sh: PORT
  zk="$dir/zookeeper"
  java -Xmx256m -cp "$zk/conf:/usr/share/java/zookeeper.jar" \
    -Dzookeeper.log.dir="$zk" org.apache.zookeeper.server.quorum.QuorumPeerMain "$zk/conf/zoo.cfg" \
    >"$zk/out.log" 2>&1 &
  echo $! > "$zk/pid"
  for _ in $(seq 150); do
    # A ZooKeeper still starting may take the connection and never answer nor close it: the
    # probe gets 2 s, else `cat` would wait for its end forever.
    if [ "$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && echo ruok >&3 && cat <&3' _ "$3" 2>/dev/null)" = imok ]; then
      exit 0
    fi
    sleep 0.2
  done
  echo "ZooKeeper did not answer on port $3 ($zk/out.log)" >&2
  exit 1
  ;;
start-node)
  node="$dir/node-${3:?node}"
  if pid_alive "$node/pid"; then exit 0; fi
  bash "$node/run" >>"$node/serve.log" 2>&1 &
  echo $! > "$node/pid"
  http=$(sed -n 's/.*--http-listen \([0-9.:]*\).*/\1/p' "$node/run")
  for _ in $(seq 300); do
    curl -fsS "http://$http/ready?ingest" >/dev/null 2>&1 && exit 0
    pid_alive "$node/pid" || { echo "node $3 exited ($node/serve.log)" >&2; tail -5 "$node/serve.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "node $3 is not ready ($node/serve.log)" >&2
  exit 1
  ;;
kill-node)
  node="$dir/node-${3:?node}"
  kill_9 "$node/pid"
  ;;
stop-node) # SIGTERM: the node stops accepting, answers what it read, flushes, exits
  node="$dir/node-${3:?node}"
  if pid_alive "$node/pid"; then
    pid=$(cat "$node/pid")
    kill -TERM "$pid"
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "node $3 did not stop within 60 s" >&2; exit 1; fi
  fi
  rm -f "$node/pid"
  ;;
start-replica)
  node="$dir/clickhouse-${3:?shard}-${4:?replica}"
  if pid_alive "$node/pid"; then exit 0; fi
  clickhouse-server --config-file="$node/config.xml" >"$node/log/stdout.log" 2>&1 &
  echo $! > "$node/pid"
  if [ "${5:-}" != --no-wait ]; then
    http=$(sed -n 's#.*<http_port>\([0-9]*\)</http_port>.*#\1#p' "$node/config.xml")
    for _ in $(seq 300); do
      curl -fsS "http://127.0.0.1:$http/ping" >/dev/null 2>&1 && exit 0
      sleep 0.2
    done
    echo "clickhouse-server $3-$4 did not answer ($node/log)" >&2
    exit 1
  fi
  ;;
kill-replica)
  node="$dir/clickhouse-${3:?shard}-${4:?replica}"
  kill_9 "$node/pid"
  ;;
down)
  for pidfile in "$dir"/haproxy.pid "$dir"/nginx/nginx.pid "$dir"/node-*/pid \
      "$dir"/clickhouse-*/pid "$dir"/zookeeper/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  ;;
*)
  echo "usage: ctl.sh DIR kill-node N | start-node N | kill-replica S R | start-replica S R | down" >&2
  exit 2
  ;;
esac
