#!/bin/sh
# First start of compose.yaml's PostgreSQL: the service's own role, which is no superuser (so
# row-level security binds it), and its database. psql quotes the password (:'password').
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$(cat "$ITEMS_PASSWORD_FILE")" <<'SQL'
CREATE ROLE items LOGIN PASSWORD :'password';
CREATE DATABASE items OWNER items;
SQL
