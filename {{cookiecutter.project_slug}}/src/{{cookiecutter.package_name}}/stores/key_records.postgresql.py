"""What the database records about each key id, shared by every worker of every host and the
``keys`` command, so a revocation reaches every worker without a file edited, and a key no one
uses can be found: its revocation (by the operator or by the key's holder) and its last use, to
the minute.

Key ids belong to the operator, not to a tenant: these tables hold no tenant's rows, and their
transactions name no tenant, so row-level security keeps every tenant's items out of their sight.
The key itself never reaches the database, only its id.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .connections import Database

if TYPE_CHECKING:
    from ..database_settings import DatabaseSettings

# The setting that names this database, for the messages of the keys command.
VARIABLE = "DATABASE_URL"
# No tenant: app.tenant is empty for these transactions, and no tenant's row is visible in them.
NO_TENANT = ""


@dataclass(frozen=True, slots=True)
class Revocation:
    reason: str | None
    revoked_by: str  # "cli" (keys revoke) or "holder" (POST /v1/keys/revoke)
    revoked_at: dt.datetime


class KeyRecords:
    """Revocations and last uses in PostgreSQL, which every worker and host shares."""

    variable = VARIABLE

    def __init__(self, database: Database) -> None:
        self.database = database

    def revoked_ids(self) -> frozenset[str]:
        with self.database.as_tenant(NO_TENANT) as cursor:
            rows = cursor.execute("SELECT key_id FROM key_revocations").fetchall()
        return frozenset(key_id for (key_id,) in rows)

    def revoke(
        self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime
    ) -> Revocation | None:
        """Record a revocation. None when this call recorded it; else the revocation already in
        force, which stays as it was (its reason, author and time)."""
        with self.database.as_tenant(NO_TENANT) as cursor:
            while True:
                cursor.execute(
                    "INSERT INTO key_revocations (key_id, reason, revoked_by, revoked_at)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING",
                    (key_id, reason, revoked_by, at),
                )
                if cursor.rowcount == 1:
                    return None
                earlier = cursor.execute(
                    "SELECT reason, revoked_by, revoked_at FROM key_revocations WHERE key_id = %s FOR SHARE",
                    (key_id,),
                ).fetchone()
                if earlier is not None:
                    return Revocation(*earlier)
                # Unrevoked between the two statements (each reads what is committed): again.

    def unrevoke(self, key_id: str) -> bool:
        """Remove a revocation; False when the id was not revoked."""
        with self.database.as_tenant(NO_TENANT) as cursor:
            cursor.execute("DELETE FROM key_revocations WHERE key_id = %s", (key_id,))
            return cursor.rowcount == 1

    def revocations(self) -> dict[str, Revocation]:
        with self.database.as_tenant(NO_TENANT) as cursor:
            rows = cursor.execute(
                "SELECT key_id, reason, revoked_by, revoked_at FROM key_revocations"
            ).fetchall()
        return {key_id: Revocation(reason, by, at) for key_id, reason, by, at in rows}

    def record_uses(self, uses: Mapping[str, dt.datetime]) -> None:
        """Each key id's last use; a later one already recorded (another worker's) is kept."""
        with self.database.as_tenant(NO_TENANT) as cursor:
            cursor.executemany(
                "INSERT INTO key_uses (key_id, last_used) VALUES (%s, %s) ON CONFLICT (key_id)"
                " DO UPDATE SET last_used = GREATEST(key_uses.last_used, EXCLUDED.last_used)",
                list(uses.items()),
            )

    def last_uses(self) -> dict[str, dt.datetime]:
        with self.database.as_tenant(NO_TENANT) as cursor:
            rows = cursor.execute("SELECT key_id, last_used FROM key_uses").fetchall()
        return {key_id: when for key_id, when in rows}


@contextmanager
def opened(settings: DatabaseSettings) -> Iterator[KeyRecords]:
    """The records for the ``keys`` command: one connection, closed afterwards. The schema is
    not migrated here: migrations run as their own role (``alembic upgrade head``)."""
    # A database the command cannot reach is one line naming DATABASE_URL; the pool's warning
    # at each attempt to connect would bury it under lines of its own.
    pool_logger = logging.getLogger("psycopg.pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.ERROR)
    database = Database(
        settings.url,
        max_size=1,
        connect_timeout=settings.connect_timeout,
        statement_timeout=settings.statement_timeout,
    )
    try:
        yield KeyRecords(database)
    finally:
        database.close()
        pool_logger.setLevel(level)
