"""Lists read one page at a time, so that no list stops silently at a size the client does not
know of: each page says where the next one starts, with a cursor that only the service reads.

A cursor is the position of the page's last row (its creation time and id, the order of every
list): the creation time in ten decimal digits of Unix seconds, then the row's 32 hex digits.
Nothing a client could not see already. The document states that pattern exactly, so every
cursor that matches it is a position the stores can read (a position no row holds gives a short
or empty page), and one that does not match it is a 422 naming ``cursor``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field

MAX_PAGE = 100
DEFAULT_PAGE = 50
# Ten digits of seconds reach the year 2286: every cursor the pattern allows is a valid time.
CURSOR = r"^[0-9]{10}[0-9a-f]{32}$"
Row = TypeVar("Row")
Position = tuple[str, str]


class PageQuery(BaseModel):
    """The query of a list: how many rows, and where to start (the ``next`` of the last page)."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Rows per page, at most {MAX_PAGE}.")] = (
        DEFAULT_PAGE
    )
    cursor: Annotated[
        str | None,
        Field(pattern=CURSOR, description="Where the page starts: `next` of the previous page."),
    ] = None


def cursor_of(position: Position) -> str:
    created, row = position
    return f"{int(dt.datetime.fromisoformat(created).timestamp()):010d}{row}"


def position_of(query: PageQuery) -> Position | None:
    """Where the page starts; None for the first page. The stores write creation times as
    ``isoformat(timespec="seconds")`` in UTC, so the position is spelled the same way."""
    if query.cursor is None:
        return None
    created = dt.datetime.fromtimestamp(int(query.cursor[:10]), dt.UTC)
    return created.isoformat(timespec="seconds"), query.cursor[10:]


def page(
    query: PageQuery,
    read: Callable[[int, Position | None], Sequence[Row]],
    position: Callable[[Row], Position],
) -> tuple[Sequence[Row], str | None]:
    """One page of rows read by ``read(limit, after)``, and the cursor of the next page (None on
    the last). It reads one row more than it shows: that row's presence says a next page exists."""
    rows = read(query.limit + 1, position_of(query))
    if len(rows) <= query.limit:
        return rows, None
    shown = rows[: query.limit]
    return shown, cursor_of(position(shown[-1]))
