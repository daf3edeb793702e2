"""The items database of the tests: a real PostgreSQL server for the session (initdb and
postgres on a free port, scripts/local_postgres.py), one database migrated with ``alembic
upgrade head`` and emptied before each test, and fresh copies of it for tests that need their own.

Skipped, with the reason, where PostgreSQL's server programs are missing, unless
REQUIRE_POSTGRES=1 is set (as the template's CI does): there a missing server is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import psycopg
import pytest

from .support import PROJECT, script

local_postgres = script("local_postgres")
TEMPLATE = "items_migrated"


class Databases:
    """Fresh databases on demand, and a way to break one (the project's SQLite version of this
    module has the same names)."""

    def __init__(self, cluster: local_postgres.PostgresCluster) -> None:
        self.cluster = cluster
        self.count = itertools.count(1)
        self.made: list[str] = []
        local_postgres.migrate(cluster.create_database(TEMPLATE), PROJECT)
        self.shared = self.new()

    def emptied(self) -> dict[str, str]:
        """The shared database, without the rows of earlier tests: every table but Alembic's
        (every resource's, ``make resource``'s included, and the key records) is emptied."""
        with self.superuser(self.shared) as admin:
            tables = admin.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            ).fetchall()
            admin.execute(f"TRUNCATE {', '.join(table for (table,) in tables)}")
        return self.shared

    def new(self, *, migrated: bool = True) -> dict[str, str]:
        """The environment of a database of its own: migrated, or empty (``migrated=False``)."""
        name = f"items_{next(self.count)}"
        url = self.cluster.create_database(name, TEMPLATE if migrated else "template1")
        self.made.append(name)
        return {"DATABASE_URL": url}

    def drop(self, env: Mapping[str, str]) -> None:
        name = urlsplit(env["DATABASE_URL"]).path.lstrip("/")
        self.cluster.drop_database(name)
        self.made.remove(name)

    def drop_items(self, env: Mapping[str, str]) -> None:
        """Remove the items table under a running service: its item routes then fail (500)."""
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute("DROP TABLE items")

    def superuser(self, env: Mapping[str, str]) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to the same database as a superuser, who bypasses row-level security."""
        name = urlsplit(env["DATABASE_URL"]).path.lstrip("/")
        return psycopg.connect(self.cluster.superuser_url(name), autocommit=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[local_postgres.PostgresCluster]:
    try:
        cluster = local_postgres.PostgresCluster().initialize()
    except local_postgres.Unavailable as reason:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES=1): {reason}")
        pytest.skip(f"{reason}: the tests that need the items database are skipped")
    cluster.start()
    cluster.create_service_role()
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
