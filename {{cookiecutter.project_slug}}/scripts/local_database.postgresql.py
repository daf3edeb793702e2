"""The items database of a local service started by the operations scripts: a PostgreSQL
server of its own (scripts/local_postgres.py), migrated with ``alembic upgrade head``, which the
outage phase of load_and_fault.py stops and starts again."""

from __future__ import annotations

from pathlib import Path

from local_postgres import PostgresCluster, migrate

PROJECT = Path(__file__).resolve().parents[1]


class LocalDatabase:
    """The same names as the SQLite version of this module."""

    stoppable = True

    def __init__(self, workdir: Path) -> None:
        self.cluster = PostgresCluster()
        # The service's role only: the owner's URL is for the migrations, never the service.
        self.env = {"DATABASE_URL": self.cluster.url("items")}
        self.started = False

    def start(self) -> None:
        """The first start makes the server, its two roles and the migrated database."""
        if self.started:
            self.cluster.start()
            return
        self.cluster.initialize().start()
        self.cluster.create_roles()
        self.cluster.create_database("items")
        migrate(self.cluster.urls("items"), PROJECT)
        self.started = True

    def stop(self) -> None:
        """Stops the server; ``start`` brings it back with its data."""
        self.cluster.stop()

    def close(self) -> None:
        """Stops the server and removes it, data and all."""
        self.cluster.remove()
