# Sourced by deploy/cluster.sh and deploy/tls.sh: a RabbitMQ node of their own, beside
# the broker on 5672, running as the rabbitmq user with its data in a directory of its
# own.

# rabbit_node_start NODE DIR DIST_PORT: starts NODE from DIR/rabbitmq.conf and
# DIR/enabled_plugins (written by the caller), unless its VM runs already (then only
# its app is started).
rabbit_node_start() {
  local node=$1 dir=$2 dist=$3
  if rabbitmqctl -q -n "$node" ping >/dev/null 2>&1; then
    rabbitmqctl -q -n "$node" start_app >/dev/null 2>&1 || true
    return 0
  fi
  install -d -o rabbitmq -g rabbitmq -m 700 "$dir/log" "$dir/mnesia"
  chown rabbitmq:rabbitmq "$dir/rabbitmq.conf" "$dir/enabled_plugins"
  env RABBITMQ_NODENAME="$node" \
      RABBITMQ_DIST_PORT="$dist" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$dir/pid" \
      rabbitmq-server -detached
}

# rabbit_node_ping_or_say NODE MESSAGE: says "cluster/tls: MESSAGE" unless NODE runs.
rabbit_node_ping_or_say() {
  rabbitmqctl -q -n "$1" ping >/dev/null 2>&1 || echo "$(basename "$0" .sh): $2"
}

# rabbit_node_wait NODE: waits until NODE has booted; fails after two minutes.
rabbit_node_wait() {
  local node=$1
  # A node answers pings only once its VM has registered; then it finishes booting.
  for _ in $(seq 1 120); do
    rabbitmqctl -q -n "$node" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  rabbitmqctl -q -n "$node" await_startup --timeout 120 >/dev/null
}

# rabbit_node_stop NODE: stops NODE's VM and waits for it; fails if it does not stop.
rabbit_node_stop() {
  local node=$1
  if rabbitmqctl -q -n "$node" ping >/dev/null 2>&1; then
    rabbitmqctl -q -n "$node" shutdown >/dev/null 2>&1
  fi
}
