#!/usr/bin/env bash
# Checks that RabbitMQ, Redis and PostgreSQL answer on loopback; starts any that is
# installed but stopped; says clearly what is missing. Usage: services.sh rabbitmq redis postgres
set -uo pipefail
want=("$@"); [[ ${#want[@]} -gt 0 ]] || want=(rabbitmq redis postgres)
RABBIT_PORT=${MICROTE_RABBIT_PORT:-5672}; REDIS_PORT=${MICROTE_REDIS_PORT:-6379}; PG_PORT=${MICROTE_PG_PORT:-5432}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # name port seconds
  local i; for ((i = 0; i < $3 * 4; i++)); do listening "$2" && return 0; sleep 0.25; done
  return 1
}
fail=0
for svc in "${want[@]}"; do
  case $svc in
    rabbitmq)
      port=$RABBIT_PORT
      if listening "$port"; then echo "ok   RabbitMQ on 127.0.0.1:$port"; continue; fi
      if command -v rabbitmq-server >/dev/null; then
        echo "...  starting RabbitMQ"; rabbitmq-server -detached >/dev/null 2>&1 || true
      else
        echo "MISSING RabbitMQ: install it (Debian: apt-get install rabbitmq-server) or set MICROTE_AMQP_URL" >&2; fail=1; continue
      fi ;;
    redis)
      port=$REDIS_PORT
      if listening "$port"; then echo "ok   Redis on 127.0.0.1:$port"; continue; fi
      if command -v redis-server >/dev/null; then
        echo "...  starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
      else
        echo "MISSING Redis: install it (Debian: apt-get install redis-server) or set MICROTE_REDIS_URL" >&2; fail=1; continue
      fi ;;
    postgres)
      port=$PG_PORT
      if listening "$port"; then echo "ok   PostgreSQL on 127.0.0.1:$port"; continue; fi
      if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
        echo "...  starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1 || true
      else
        echo "MISSING PostgreSQL: install it (Debian: apt-get install postgresql) or set MICROTE_TEST_PG_URL" >&2; fail=1; continue
      fi ;;
    *) echo "unknown service $svc" >&2; fail=1; continue ;;
  esac
  if wait_for "$svc" "$port" 60; then echo "ok   $svc started on 127.0.0.1:$port"
  else echo "FAILED $svc did not start listening on 127.0.0.1:$port within 60 s" >&2; fail=1; fi
done
exit $fail
