#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432,
# user postgres, trust) are running; installs them from Debian's packages when they
# are missing. Safe to run again and again. With --browser, also Debian's Chromium and
# ChromeDriver, which the console's tests drive.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "services: $1 needs root (run with sudo)" >&2
    exit 1
  fi
}

apt_updated=""
apt_install() {
  need_root "installing $*"
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "services: $name did not open port $port" >&2
  exit 1
}

# --- RabbitMQ ---------------------------------------------------------------
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  echo "services: installing RabbitMQ"
  apt_install rabbitmq-server
fi
if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  need_root "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi
if ! rabbitmqctl await_startup >/dev/null 2>&1; then
  echo "services: RabbitMQ opened its port but did not finish booting; see its logs (/var/log/rabbitmq)" >&2
  exit 1
fi

# The management API: workers read the broker's unacknowledged counts from it.
if ! rabbitmq-plugins is_enabled rabbitmq_management >/dev/null 2>&1; then
  echo "services: enabling RabbitMQ's management API (port 15672)"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
wait_port 15672 "RabbitMQ's management API"

# --- PostgreSQL -------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: installing PostgreSQL"
  apt_install postgresql postgresql-client
fi
cluster_version() {
  ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}
if ! port_open 5432; then
  need_root "starting PostgreSQL"
  version=$(cluster_version)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    echo "services: creating PostgreSQL cluster $version/main"
    pg_createcluster "$version" main >/dev/null
  fi
  echo "services: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "services: PostgreSQL does not accept connections" >&2; exit 1; }
if ! psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian cluster asks for a password on TCP; local development and CI use
  # trust for user postgres on the loopback only.
  need_root "configuring PostgreSQL"
  version=$(cluster_version)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    echo "services: allowing local connections for user postgres (trust on 127.0.0.1)"
    sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    sleep 1
  fi
  if ! psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null; then
    echo "services: cannot connect to PostgreSQL as postgres on 127.0.0.1" >&2
    exit 1
  fi
fi
echo "services: RabbitMQ and PostgreSQL are up"

# --- Chromium, for the console's browser tests -------------------------------
if [ "${1:-}" = "--browser" ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  echo "services: installing Chromium and ChromeDriver (the console's browser tests)"
  apt_install chromium chromium-driver
fi
