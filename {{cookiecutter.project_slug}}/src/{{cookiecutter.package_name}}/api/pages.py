"""Lists read one page at a time, so that no list stops silently at a size the client does not
know of: each page says where the next one starts, with a cursor that only the service reads.

A cursor is the position of the page's last row (its creation time and id, the order of every
list), base64url-encoded: opaque to clients, and nothing a client could not see already. One
that does not decode to such a position is a 422 naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field

from ..errors import fail

MAX_PAGE = 100
DEFAULT_PAGE = 50
# A creation time as the stores write it, and an id as they make it.
POSITION = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\+00:00|Z))\n([0-9a-f]{32})")
Row = TypeVar("Row")
Position = tuple[str, str]


class PageQuery(BaseModel):
    """The query of a list: how many rows, and where to start (the ``next`` of the last page)."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Rows per page, at most {MAX_PAGE}.")] = (
        DEFAULT_PAGE
    )
    cursor: Annotated[
        str | None, Field(max_length=128, description="Where the page starts: `next` of the previous page.")
    ] = None


def cursor_of(position: Position) -> str:
    return base64.urlsafe_b64encode("\n".join(position).encode()).decode().rstrip("=")


def position_of(query: PageQuery) -> Position | None:
    """Where the page starts; None for the first page."""
    if query.cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    match = POSITION.fullmatch(text)
    if match is None:
        fail(
            422, errors=[{"in": "query", "pointer": "cursor", "detail": "is not a cursor this service made"}]
        )
    return match[1], match[2]


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
