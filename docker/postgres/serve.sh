#!/bin/sh
# First start: a cluster in $PGDATA owned by whoever runs this (the pod's uid), one database and
# role "memoria". Authentication is "trust" from anywhere: this image exists only for the test
# bed's own pod network, never for anything reachable from outside.
set -eu
PGDATA=${PGDATA:-/data/pgdata}
bin=/usr/lib/postgresql/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync \
    --encoding=UTF8 --locale=C >/dev/null
  printf "host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n" >>"$PGDATA/pg_hba.conf"
  opts="-c listen_addresses= -c unix_socket_directories=/tmp"
  "$bin/pg_ctl" -D "$PGDATA" -o "$opts" -w -s start
  psql -h /tmp -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE memoria LOGIN SUPERUSER" -c "CREATE DATABASE memoria OWNER memoria"
  "$bin/pg_ctl" -D "$PGDATA" -w -s stop
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp \
  -c fsync=off -c max_connections=100
