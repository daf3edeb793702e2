"""The items database of a local service started by the operations scripts: a SQLite file in
their working directory, which the service migrates itself at start."""

from __future__ import annotations

from pathlib import Path


class LocalDatabase:
    """The same names as the PostgreSQL version of this module, which runs a real server."""

    # A file cannot be stopped and started again: the outage phase of the template's
    # bench/load_and_fault.py needs a server.
    stoppable = False

    def __init__(self, workdir: Path) -> None:
        self.env = {"ITEMS_DB": str(workdir / "items.sqlite3")}

    def start(self) -> None:
        """Nothing to start: the service creates the file."""

    def close(self) -> None:
        """Nothing to remove: the file goes with the working directory."""
