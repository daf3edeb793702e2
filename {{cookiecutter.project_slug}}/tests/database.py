"""The items database of the tests: a SQLite file per test, made and migrated by the app itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

# What `alembic upgrade head` cannot use, and the variable its one line of error names.
UNUSABLE_DATABASE = ({"ITEMS_DB": "/dev/null/items.sqlite3"}, "ITEMS_DB")  # under a file: never made


class Databases:
    """Fresh databases on demand, and a way to break one (the project's PostgreSQL version of
    this module has the same names)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.count = directory, 0

    def new(self) -> dict[str, str]:
        """The environment of a database of its own, empty: the service migrates it at start."""
        self.count += 1
        return {"ITEMS_DB": str(self.directory / f"items-{self.count}.sqlite3")}

    def empty(self) -> dict[str, str]:
        """What ``alembic`` reads to migrate a database of its own, not migrated yet."""
        return self.new()

    def drop_items(self, env: Mapping[str, str]) -> None:
        """Remove the items table under a running service: its item routes then fail (500)."""
        with sqlite3.connect(env["ITEMS_DB"]) as db:
            db.execute("DROP TABLE items")


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Databases:
    return Databases(tmp_path_factory.mktemp("databases"))


@pytest.fixture
def database_env(databases: Databases) -> dict[str, str]:
    """The environment of an empty items database for one test."""
    return databases.new()
