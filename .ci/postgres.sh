#!/usr/bin/env bash
# A throwaway PostgreSQL server for the trace store's backend tests; prints its SQLAlchemy URL on stdout.
#
#   export DXGRAPH_TEST_PG_URL="$(bash .ci/postgres.sh)"
#
# Installs Debian's postgresql when missing (needs root), initialises a cluster in $DXGRAPH_PG_DIR
# (default /tmp/dxgraph-pg) owned by the postgres user, listens on 127.0.0.1:$DXGRAPH_PG_PORT
# (default 55432) only, and creates the user and database dxgraph_test. Idempotent: a second run reuses
# the running server. Stop it with: su postgres -c "pg_ctl -D /tmp/dxgraph-pg stop".
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${DXGRAPH_PG_PORT:-55432}"
DATA="${DXGRAPH_PG_DIR:-/tmp/dxgraph-pg}"
DB=dxgraph_test
USER_NAME=dxgraph_test
PASSWORD=dxgraph_test
log() { echo "postgres.sh: $*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ]; then
    log "installing postgresql (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
BIN="$(pg_bin)"

# initdb and the server refuse to run as root: run them as the postgres user when we are root.
if [ "$(id -u)" = 0 ]; then
    as_pg() { su postgres -s /bin/sh -c "$*"; }
else
    as_pg() { sh -c "$*"; }
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initialising a cluster in $DATA"
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$DATA"
        chmod 700 "$DATA"
        as_pg "'$BIN/initdb' -D '$DATA' -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256" >&2
    fi
    log "starting the server on 127.0.0.1:$PORT"
    as_pg "'$BIN/pg_ctl' -D '$DATA' -l '$DATA/server.log' -w -t 60 \
        -o \"-c listen_addresses=127.0.0.1 -p $PORT -k '$DATA' -c fsync=off\" start" >&2
fi

psql_su() { as_pg "'$BIN/psql' -h '$DATA' -p $PORT -U postgres -v ON_ERROR_STOP=1 -qtAX $*"; }
if [ "$(psql_su "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$USER_NAME'\"")" != 1 ]; then
    psql_su "-c \"CREATE ROLE $USER_NAME LOGIN PASSWORD '$PASSWORD'\"" >&2
fi
if [ "$(psql_su "-c \"SELECT 1 FROM pg_database WHERE datname = '$DB'\"")" != 1 ]; then
    psql_su "-c \"CREATE DATABASE $DB OWNER $USER_NAME\"" >&2
fi

# The SQLAlchemy driver: psycopg 3 (binary wheel), into the project's venv when there is one.
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import psycopg" 2>/dev/null; then
    log "installing psycopg[binary] into .venv"
    .venv/bin/pip install -q "psycopg[binary]>=3.1" >&2
fi

echo "postgresql+psycopg://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
