#!/usr/bin/env bash
# TLS-only services beside the usual ones, for trying the fleet over TLS and for the
# TLS test: a CA made here, a PostgreSQL on 5443 that accepts TLS connections only
# (user postgres, password skeelo), and a RabbitMQ node on 5671 that listens for TLS
# only (guest/guest). Both certificates are issued for localhost and 127.0.0.1.
#
#   deploy/tls.sh start   # make the CA and certificates, start both; idempotent
#   deploy/tls.sh stop    # stop both and remove their data and certificates
#   deploy/tls.sh env     # print where they are
#
# Needs root (the services run as the postgres and rabbitmq users), openssl, and
# PostgreSQL and RabbitMQ installed (deploy/services.sh installs them). Data lives in
# /var/lib/skeelo-tls (SKEELO_TLS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/rabbit-node.sh
. deploy/rabbit-node.sh

BASE=$(realpath -m "${SKEELO_TLS_DIR:-/var/lib/skeelo-tls}")
PG_PORT=5443
AMQPS_PORT=5671
NODE=skeelo-tls@localhost

pg_bin() { echo "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n 1)/bin"; }

env_out() {
  echo "CA=$BASE/ca.pem"
  echo "OTHER_CA=$BASE/other-ca.pem"
  echo "DATABASE=postgres://postgres:skeelo@localhost:$PG_PORT"
  echo "AMQPS=amqps://guest:guest@localhost:$AMQPS_PORT"
}

certs() {
  install -d -m 755 "$BASE"
  [ -f "$BASE/server.pem" ] && return 0
  local q=(-nodes -newkey rsa:2048)
  openssl req -x509 "${q[@]}" -days 30 -subj "/CN=skeelo-bridge test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$BASE/ca.key" -out "$BASE/ca.pem" 2>/dev/null
  # A CA that signed nothing here: what a wrong sslrootcert or cacertfile looks like.
  openssl req -x509 "${q[@]}" -days 30 -subj "/CN=another CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$BASE/other-ca.key" -out "$BASE/other-ca.pem" 2>/dev/null
  openssl req "${q[@]}" -subj "/CN=localhost" -keyout "$BASE/server.key" -out "$BASE/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$BASE/server.ext"
  openssl x509 -req -in "$BASE/server.csr" -CA "$BASE/ca.pem" -CAkey "$BASE/ca.key" \
    -CAcreateserial -days 30 -extfile "$BASE/server.ext" -out "$BASE/server.pem" 2>/dev/null
  chmod 644 "$BASE/ca.pem" "$BASE/other-ca.pem"
}

start_pg() {
  local bin data=$BASE/pg
  bin=$(pg_bin)
  if [ ! -f "$data/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
    install -o postgres -g postgres -m 600 "$BASE/server.pem" "$data/server.crt"
    install -o postgres -g postgres -m 600 "$BASE/server.key" "$data/server.key"
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
ssl = on
unix_socket_directories = '$data'
CONF
    # TLS connections only: no line lets a plain one in.
    printf '%s\n' "local all all trust" "hostssl all all 127.0.0.1/32 scram-sha-256" >"$data/pg_hba.conf"
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    echo "tls: starting PostgreSQL (TLS only) on $PG_PORT"
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/log" -w start >/dev/null
  fi
  runuser -u postgres -- psql -q -h "$data" -p "$PG_PORT" -U postgres -d postgres \
    -c "ALTER USER postgres PASSWORD 'skeelo'" >/dev/null
}

start_rabbit() {
  local dir=$BASE/rabbit
  install -d -o rabbitmq -g rabbitmq -m 700 "$dir"
  install -o rabbitmq -g rabbitmq -m 600 "$BASE/server.pem" "$dir/server.pem"
  install -o rabbitmq -g rabbitmq -m 600 "$BASE/server.key" "$dir/server.key"
  install -o rabbitmq -g rabbitmq -m 644 "$BASE/ca.pem" "$dir/ca.pem"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
CONF
  echo '[].' >"$dir/enabled_plugins"
  rabbit_node_ping_or_say "$NODE" "starting RabbitMQ (TLS only) on $AMQPS_PORT"
  rabbit_node_start "$NODE" "$dir" $((AMQPS_PORT + 20000))
  if ! rabbit_node_wait "$NODE"; then
    echo "tls: $NODE did not start; see $dir/log" >&2
    exit 1
  fi
}

start() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "tls: needs root (the services run as the postgres and rabbitmq users)" >&2
    exit 1
  fi
  command -v openssl >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
  command -v rabbitmq-server >/dev/null && command -v psql >/dev/null || deploy/services.sh
  certs
  start_pg
  start_rabbit
  echo "tls: PostgreSQL and RabbitMQ up, TLS only"
  env_out
}

stop() {
  local bin data=$BASE/pg
  bin=$(pg_bin)
  if [ -f "$data/PG_VERSION" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rabbit_node_stop "$NODE" || true
  rm -rf "$BASE"
  echo "tls: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) env_out ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
