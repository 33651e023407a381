#!/usr/bin/env bash
# The whole fleet end to end on this machine: RabbitMQ and PostgreSQL (started or
# installed if missing), the Skeelo simulator, the workers, the operators' web console,
# a demo set of ERP events, and what Skeelo ended with. On a terminal it then waits
# while you look around the console; everything it starts is stopped when it ends.
#
#   deploy/demo.sh                 # 25 contracts
#   CONTRACTS=200 deploy/demo.sh   # more
set -euo pipefail
cd "$(dirname "$0")/.."

CONTRACTS=${CONTRACTS:-25}
SIM_ADDR=${SIM_ADDR:-127.0.0.1:18080}
WORKERS_HTTP=${WORKERS_HTTP:-127.0.0.1:19090}
CONSOLE_ADDR=${CONSOLE_ADDR:-127.0.0.1:18088}
VHOST=skeelo-demo
DB=skeelo_demo
run_dir=.demo
mkdir -p "$run_dir"

deploy/services.sh

echo "== building"
cargo build --quiet --locked --bins
bin=target/debug

echo "== a clean vhost ($VHOST) and database ($DB)"
rabbitmqctl delete_vhost "$VHOST" >/dev/null 2>&1 || true
rabbitmqctl add_vhost "$VHOST" >/dev/null
rabbitmqctl set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
psql -w -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null

export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export RABBITMQ_MANAGEMENT_URL="http://guest:guest@127.0.0.1:15672"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export SKEELO_BASE_URL="http://$SIM_ADDR"
export SKEELO_CLIENT_ID=demo-client
export SKEELO_CLIENT_SECRET=demo-secret
export SKEELO_RATE_PER_SECOND=${SKEELO_RATE_PER_SECOND:-50}
export HTTP_ADDR=$WORKERS_HTTP

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting the Skeelo simulator on $SIM_ADDR (2% of calls fail, as a real partner's might)"
"$bin/skeelo-sim" --addr "$SIM_ADDR" --error-rate 0.02 --rate-per-second 60 >"$run_dir/sim.out" 2>"$run_dir/sim.log" &
pids+=($!)
echo "== starting skeelo-workers (metrics on http://$WORKERS_HTTP/metrics)"
"$bin/skeelo-workers" 2>"$run_dir/workers.log" &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fs "http://$WORKERS_HTTP/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://$WORKERS_HTTP/readyz" >/dev/null || { echo "workers never became ready; see $run_dir/workers.log" >&2; exit 1; }

echo "== starting the operators' web console on http://$CONSOLE_ADDR (account demo, an operator)"
console_password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$console_password" | "$bin/skeelo-ops" user add demo --role operator >/dev/null
SKEELO_CONSOLE_ADDR=$CONSOLE_ADDR "$bin/skeelo-console" 2>"$run_dir/console.log" &
pids+=($!)
for _ in $(seq 1 60); do
  curl -fs "http://$CONSOLE_ADDR/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://$CONSOLE_ADDR/healthz" >/dev/null || { echo "the console never answered; see $run_dir/console.log" >&2; exit 1; }

echo "== publishing demo events for $CONTRACTS contracts, shuffled as separate queues deliver them"
"$bin/skeelo-ops" sample --contracts "$CONTRACTS" --seed 2026 --shuffle >"$run_dir/events.jsonl"
total=$(wc -l <"$run_dir/events.jsonl")
"$bin/skeelo-ops" publish "$run_dir/events.jsonl"

echo "== waiting for a result for each of the $total events"
handled=0
for _ in $(seq 1 600); do
  handled=$(curl -fs "http://$WORKERS_HTTP/metrics" | awk '/^skeelo_events_total/ {s+=$2} END {print s+0}')
  [ "$handled" -ge "$total" ] && break
  sleep 0.2
done
echo "handled $handled of $total events"

echo
echo "== outcomes (skeelo_events_total)"
curl -fs "http://$WORKERS_HTTP/metrics" | grep '^skeelo_events_total' | awk '$2 > 0'
echo
echo "== subscribers, as the fleet recorded them (skeelo-ops subscribers --status all)"
"$bin/skeelo-ops" subscribers --status all --limit 20
echo
echo "== what Skeelo ended with, asked through its partner API (skeelo-ops check)"
"$bin/skeelo-ops" check
echo
first=$(head -n 1 "$run_dir/events.jsonl" | sed -E 's/.*"id":"([^"]+)".*/\1/')
echo "== one contract's story (skeelo-ops contract show $first)"
"$bin/skeelo-ops" contract show "$first"
echo
echo "== the same contract as support reads it (skeelo-ops explain $first --lang pt-BR)"
"$bin/skeelo-ops" explain "$first" --lang pt-BR
echo
echo "Logs: $run_dir/workers.log, $run_dir/sim.log, $run_dir/console.log. Events: $run_dir/events.jsonl"
[ "$handled" -ge "$total" ]
if [ -t 0 ]; then
  echo
  echo "The console is at http://$CONSOLE_ADDR — account demo, password $console_password"
  read -r -p "Press Enter to stop everything. " _
fi
