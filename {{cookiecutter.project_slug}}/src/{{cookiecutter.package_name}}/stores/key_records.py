"""What the database records about each key id, shared by every worker and the ``keys`` command,
so a revocation reaches every worker without a file edited, and a key no one uses can be found:
its revocation (by the operator or by the key's holder) and its last use, to the minute.

Key ids belong to the operator, not to a tenant: no query here names one. The key itself never
reaches the database, only its id.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .connections import Database, apply_migrations

if TYPE_CHECKING:
    from ..database_settings import DatabaseSettings

# The setting that names this database, for the messages of the keys command.
VARIABLE = "ITEMS_DB"


@dataclass(frozen=True, slots=True)
class Revocation:
    reason: str | None
    revoked_by: str  # "cli" (keys revoke) or "holder" (POST /v1/keys/revoke)
    revoked_at: dt.datetime


class KeyRecords:
    """Revocations and last uses in the SQLite file every worker of the host shares."""

    variable = VARIABLE

    def __init__(self, database: Database) -> None:
        self.database = database

    def revoked_ids(self) -> frozenset[str]:
        rows = self.database.read(lambda db: db.execute("SELECT key_id FROM key_revocations").fetchall())
        return frozenset(key_id for (key_id,) in rows)

    def revoke(
        self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime
    ) -> Revocation | None:
        """Record a revocation. None when this call recorded it; else the revocation already in
        force, which stays as it was (its reason, author and time)."""

        def insert(db: sqlite3.Connection) -> Revocation | None:
            inserted = db.execute(
                "INSERT INTO key_revocations (key_id, reason, revoked_by, revoked_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key_id) DO NOTHING",
                (key_id, reason, revoked_by, _text(at)),
            ).rowcount
            if inserted:
                return None
            earlier = db.execute(
                "SELECT reason, revoked_by, revoked_at FROM key_revocations WHERE key_id = ?", (key_id,)
            ).fetchone()
            return Revocation(earlier[0], earlier[1], _instant(earlier[2]))

        return self.database.write(insert)

    def unrevoke(self, key_id: str) -> bool:
        """Remove a revocation; False when the id was not revoked."""
        return self.database.write(
            lambda db: db.execute("DELETE FROM key_revocations WHERE key_id = ?", (key_id,)).rowcount == 1
        )

    def revocations(self) -> dict[str, Revocation]:
        rows = self.database.read(
            lambda db: db.execute(
                "SELECT key_id, reason, revoked_by, revoked_at FROM key_revocations"
            ).fetchall()
        )
        return {key_id: Revocation(reason, by, _instant(at)) for key_id, reason, by, at in rows}

    def record_uses(self, uses: Mapping[str, dt.datetime]) -> None:
        """Each key id's last use; a later one already recorded (another worker's) is kept."""

        def upsert(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO key_uses (key_id, last_used) VALUES (?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET last_used = max(last_used, excluded.last_used)",
                [(key_id, _text(when)) for key_id, when in uses.items()],
            )

        self.database.write(upsert)

    def last_uses(self) -> dict[str, dt.datetime]:
        rows = self.database.read(lambda db: db.execute("SELECT key_id, last_used FROM key_uses").fetchall())
        return {key_id: _instant(when) for key_id, when in rows}


def _text(when: dt.datetime) -> str:
    # One spelling (UTC, to the second): text compares in time order, as max() above needs.
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@contextmanager
def opened(settings: DatabaseSettings) -> Iterator[KeyRecords]:
    """The records for the ``keys`` command, on the file the service serves from, brought to the
    newest schema as the service's start would bring it; its connections closed afterwards.

    Raises ValueError (one line naming ITEMS_DB) when there is no file at that path: a shell
    without the service's ITEMS_DB would otherwise record a revocation in a new, empty file in
    the working directory, which no worker reads.
    """
    if not Path(settings.items_db).is_file():
        raise ValueError(
            f"{VARIABLE}: no database file there; name the service's own (it is made at the first start)"
        )
    apply_migrations(settings.items_db)
    database = Database(settings.items_db, busy_timeout=settings.busy_timeout)
    try:
        yield KeyRecords(database)
    finally:
        database.close()
