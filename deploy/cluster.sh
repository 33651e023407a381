#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (not instead of) the broker on
# 5672: nodes skeelo-a, skeelo-b and skeelo-c on AMQP ports 5681-5683 (management API
# on 15681-15683), b and c joined to a. For trying the fleet against a cluster and for
# the cluster test; the broker on 5672 is left alone.
#
#   deploy/cluster.sh start    # start (or finish starting) the three nodes; idempotent
#   deploy/cluster.sh stop     # stop them and remove their data
#   deploy/cluster.sh urls     # print AMQP_URL and RABBITMQ_MANAGEMENT_URL for them
#
# Needs RabbitMQ installed (deploy/services.sh installs it) and root (the nodes run as
# the rabbitmq user, with its Erlang cookie). Their data lives in
# /var/lib/rabbitmq/skeelo-cluster (SKEELO_CLUSTER_DIR), owned by that user.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=(a b c)
AMQP_PORTS=(5681 5682 5683)
# shellcheck source=deploy/rabbit-node.sh
. deploy/rabbit-node.sh

BASE=$(realpath -m "${SKEELO_CLUSTER_DIR:-/var/lib/rabbitmq/skeelo-cluster}")

node_name() { echo "skeelo-$1@localhost"; }

ctl() { rabbitmqctl -q -n "$(node_name "$1")" "${@:2}"; }

urls() {
  local amqp="" mgmt=""
  for i in 0 1 2; do
    amqp+="${amqp:+,}amqp://guest:guest@127.0.0.1:${AMQP_PORTS[$i]}/%2f"
    mgmt+="${mgmt:+,}http://guest:guest@127.0.0.1:$((AMQP_PORTS[$i] + 10000))"
  done
  echo "AMQP_URL=$amqp"
  echo "RABBITMQ_MANAGEMENT_URL=$mgmt"
}

start_node() {
  local n=$1 port=$2 dir=$BASE/$1
  install -d -o rabbitmq -g rabbitmq -m 700 "$dir"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$port
management.tcp.ip = 127.0.0.1
management.tcp.port = $((port + 10000))
loopback_users = none
CONF
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  rabbit_node_ping_or_say "$(node_name "$n")" "starting $(node_name "$n") on port $port"
  rabbit_node_start "$(node_name "$n")" "$dir" $((port + 20000))
}

start() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "cluster: needs root (the nodes run as the rabbitmq user)" >&2
    exit 1
  fi
  command -v rabbitmq-server >/dev/null || deploy/services.sh
  if [ -e "$BASE" ] && [ "$(stat -c %U "$BASE")" != rabbitmq ]; then
    echo "cluster: $BASE exists and is not the rabbitmq user's; remove it or set SKEELO_CLUSTER_DIR" >&2
    exit 1
  fi
  install -d -o rabbitmq -g rabbitmq -m 700 "$BASE"
  for i in 0 1 2; do
    start_node "${NODES[$i]}" "${AMQP_PORTS[$i]}"
  done
  for n in "${NODES[@]}"; do
    if ! rabbit_node_wait "$(node_name "$n")"; then
      echo "cluster: $(node_name "$n") did not start; see $BASE/$n/log" >&2
      exit 1
    fi
  done
  local first
  first=$(node_name a)
  for n in b c; do
    if ! ctl "$n" cluster_status --formatter json | grep -q "\"$first\""; then
      echo "cluster: joining $(node_name "$n") to $first"
      # The nodes' own chatter while joining goes to a log, shown if the join fails.
      if ! { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$first" &&
             ctl "$n" start_app; } 2>>"$BASE/join.log"; then
        cat "$BASE/join.log" >&2
        echo "cluster: $(node_name "$n") could not join $first" >&2
        exit 1
      fi
    fi
  done
  for n in "${NODES[@]}"; do
    ctl "$n" await_startup --timeout 120 >/dev/null
  done
  local running
  running=$(ctl a cluster_status --formatter json |
    sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' | grep -o 'skeelo-[abc]@localhost' | sort -u | wc -l)
  if [ "$running" -lt 3 ]; then
    echo "cluster: only $running nodes in the cluster" >&2
    exit 1
  fi
  echo "cluster: three nodes up"
  urls
}

stop() {
  local left=0
  for n in "${NODES[@]}"; do
    rabbit_node_stop "$(node_name "$n")" || left=1
  done
  if [ "$left" -ne 0 ]; then
    echo "cluster: a node did not stop; its data stays in $BASE" >&2
    exit 1
  fi
  rm -rf "$BASE"
  echo "cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  urls) urls ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
