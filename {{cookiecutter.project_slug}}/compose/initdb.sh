#!/bin/sh
# First start of compose.yaml's PostgreSQL: the two roles of the items database, as production
# has them (README, "Roles"). items_owner owns the database and its tables and runs the
# migrations; items_service, the service's role, is no superuser, bypasses nothing, owns
# nothing, and may only read and write rows, in every table the owner makes now or later.
# psql quotes the passwords (:'owner', :'service').
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=owner="$(cat "$ITEMS_OWNER_PASSWORD_FILE")" \
    --set=service="$(cat "$ITEMS_PASSWORD_FILE")" <<'SQL'
CREATE ROLE items_owner LOGIN PASSWORD :'owner';
CREATE ROLE items_service LOGIN PASSWORD :'service';
CREATE DATABASE items OWNER items_owner;
REVOKE ALL ON DATABASE items FROM PUBLIC;
GRANT CONNECT ON DATABASE items TO items_service;
\connect items
ALTER SCHEMA public OWNER TO items_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO items_service;
ALTER DEFAULT PRIVILEGES FOR ROLE items_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO items_service;
SQL
