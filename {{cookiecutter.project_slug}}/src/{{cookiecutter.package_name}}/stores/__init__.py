"""The stores of the service's resources, one per resource and all on one worker's connections
to the database (``connections.py``), each a class whose every query names the caller's tenant.

``make resource NAME=orders`` writes ``stores/orders.py`` and adds it to :data:`RESOURCES`.
"""

from __future__ import annotations

from typing import Any

from .connections import Database, StoreUnavailable
from .items import ItemStore

__all__ = ["RESOURCES", "Database", "StoreUnavailable", "Stores"]

# Each resource's store, by the name its blueprint asks for it by.
RESOURCES: dict[str, type[Any]] = {
    "items": ItemStore,
}


class Stores(dict[str, Any]):
    """Every resource's store, on one database: what ``current_app.extensions["stores"]`` holds."""

    def __init__(self, database: Database) -> None:
        super().__init__((name, store(database)) for name, store in RESOURCES.items())
        self.database = database

    def close(self) -> None:
        self.database.close()
