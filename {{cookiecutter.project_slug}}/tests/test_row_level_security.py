"""Every table that holds tenants' rows sits behind row-level security, enabled and forced, with
a policy that keys it by the transaction's tenant: items, and every table a team adds (``make
resource`` copies the items migration; a migration without those statements fails here).

Read from PostgreSQL's catalog on the database that the migrations built, so it holds for tables
this file has never heard of."""

from __future__ import annotations

import psycopg

from .database import Databases

TENANT_TABLES = (
    "SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
    " AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant'"
    " AND NOT a.attisdropped)"
)
POLICIES = "SELECT qual, with_check FROM pg_policies WHERE schemaname = 'public' AND tablename = %s"


def tenant_tables(connection: psycopg.Connection[tuple[object, ...]]) -> dict[str, tuple[bool, bool]]:
    return {str(name): (bool(on), bool(forced)) for name, on, forced in connection.execute(TENANT_TABLES)}


def test_every_table_with_a_tenant_column_is_behind_forced_row_level_security(databases: Databases) -> None:
    with databases.superuser(databases.emptied()) as admin:
        tables = tenant_tables(admin)
        assert "items" in tables
        unprotected = {name: flags for name, flags in tables.items() if flags != (True, True)}
        assert unprotected == {}, "ENABLE and FORCE ROW LEVEL SECURITY are missing (enabled, forced)"
        for table in tables:
            policies = admin.execute(POLICIES, (table,)).fetchall()
            assert policies, f"{table} has row-level security but no policy: no row is visible"
            for using, check in policies:
                assert "app.tenant" in str(using), f"a policy of {table} does not key rows by the tenant"
                assert "app.tenant" in str(check), f"a policy of {table} lets any tenant's row be written"


def test_a_table_without_row_level_security_is_found(databases: Databases) -> None:
    """The check itself, shown a table that a careless migration made."""
    env = databases.new()
    with databases.superuser(env) as admin:
        admin.execute("CREATE TABLE careless (id text PRIMARY KEY, tenant text NOT NULL)")
        assert tenant_tables(admin)["careless"] == (False, False)
    databases.drop(env)
