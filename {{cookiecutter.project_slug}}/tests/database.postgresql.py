"""The items database of the tests: a real PostgreSQL server for the session (initdb and
postgres on a free port, scripts/local_postgres.py) with the two roles of production (the
tables' owner, which migrates, and the service's role), one database migrated with ``alembic
upgrade head`` and emptied before each test, and fresh copies of it for tests that need their own.

Skipped, with the reason, where PostgreSQL's server programs are missing, unless
REQUIRE_POSTGRES=1 is set (as the template's CI does): there a missing server is a failure.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import psycopg
import pytest

from .support import PROJECT, script

local_postgres = script("local_postgres")
TEMPLATE = "items_migrated"
# The password of the roles that ``role_env`` makes.
PROBE_PASSWORD = "probe-Passw0rd"
# What `alembic upgrade head` cannot use, and the variable its one line of error names.
UNUSABLE_DATABASE: tuple[dict[str, str], str] = ({}, "DATABASE_URL")


class Databases:
    """Fresh databases on demand, and a way to break one (the project's SQLite version of this
    module has the same names)."""

    def __init__(self, cluster: local_postgres.PostgresCluster) -> None:
        self.cluster = cluster
        self.count = itertools.count(1)
        self.made: list[str] = []
        cluster.create_database(TEMPLATE)
        local_postgres.migrate(cluster.urls(TEMPLATE), PROJECT)
        self.shared = self.new()

    def emptied(self) -> dict[str, str]:
        """The shared database, without the rows of earlier tests: every table that holds
        tenants' rows (every resource's, ``make resource``'s included) is emptied."""
        with self.superuser(self.shared) as admin:
            tables = admin.execute(
                "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.columns"
                " WHERE column_name = 'tenant' AND table_schema = 'public'"
            ).fetchall()
            admin.execute(f"TRUNCATE {', '.join(table for (table,) in tables)}")
        return self.shared

    def new(self, *, migrated: bool = True) -> dict[str, str]:
        """The service's environment of a database of its own: migrated, or empty (``migrated=False``)."""
        name = f"items_{next(self.count)}"
        url = self.cluster.create_database(name, TEMPLATE if migrated else "template1")
        self.made.append(name)
        return {"DATABASE_URL": url}

    def empty(self) -> dict[str, str]:
        """What ``alembic`` reads to migrate a database of its own, not migrated yet."""
        return self.migrating(self.new(migrated=False))

    def migrating(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` and the owner's URL of the same database: what ``alembic`` reads."""
        return self.cluster.urls(_name(env))

    def drop(self, env: Mapping[str, str]) -> None:
        name = _name(env)
        self.cluster.drop_database(name)
        self.made.remove(name)

    def drop_items(self, env: Mapping[str, str]) -> None:
        """Remove the items table under a running service: its item routes then fail (500)."""
        with self.superuser(env) as admin:
            admin.execute("DROP TABLE items")

    def superuser(self, env: Mapping[str, str]) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to the same database as a superuser, who bypasses row-level security."""
        return psycopg.connect(self.cluster.superuser_url(_name(env)), autocommit=True)


def _name(env: Mapping[str, str]) -> str:
    return urlsplit(env["DATABASE_URL"]).path.lstrip("/")


@pytest.fixture(scope="session")
def postgres() -> Iterator[local_postgres.PostgresCluster]:
    try:
        cluster = local_postgres.PostgresCluster().initialize()
    except local_postgres.Unavailable as reason:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES=1): {reason}")
        pytest.skip(f"{reason}: the tests that need the items database are skipped")
    cluster.start()
    cluster.create_roles()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def databases(postgres: local_postgres.PostgresCluster) -> Databases:
    return Databases(postgres)


@pytest.fixture
def database_env(databases: Databases) -> dict[str, str]:
    """The environment of a migrated items database, empty: the session's, emptied for each
    test. A test that changes its schema takes a database of its own (``databases.new()``)."""
    return databases.emptied()


@pytest.fixture
def role_env(databases: Databases) -> Iterator[Callable[..., dict[str, str]]]:
    """``role_env(*statements)``: the environment of a migrated database of its own, where the
    service connects as a new login role, shaped by ``statements`` (run by the superuser in that
    database; ``{role}`` and ``{database}`` stand for the two names). Both go after the test."""
    made: list[tuple[dict[str, str], str]] = []

    def make(*statements: str) -> dict[str, str]:
        env, role = databases.new(), f"probe_{uuid.uuid4().hex[:12]}"
        made.append((env, role))
        database = _name(env)
        with databases.superuser(env) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PROBE_PASSWORD}'")
            admin.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
            for statement in statements:
                admin.execute(statement.format(role=role, database=database))
        service = f"{local_postgres.SERVICE_ROLE}:{databases.cluster.service_password}@"
        return {"DATABASE_URL": env["DATABASE_URL"].replace(service, f"{role}:{PROBE_PASSWORD}@")}

    yield make
    for env, role in made:
        databases.drop(env)
        for name in (f"{role}_above", role):
            databases.cluster.admin("DROP ROLE IF EXISTS {}", name)
