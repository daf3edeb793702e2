"""The database's rows of the settings table, for PostgreSQL: URLs that libpq reads as written,
shown without their passwords.

``settings.py`` builds this table with the service's; ``database.py`` uses it. A project
generated for SQLite has its own version of this module with the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .variables import UNPARSABLE_URI, Invalid, read, redacted_uri, whole

SCHEMES = ("postgresql", "postgres")
SECRET_PARAMETERS = re.compile(r"((?:^|[?&])(?:ssl)?password=)[^&]*", re.IGNORECASE)
MIGRATION_URL = "DATABASE_MIGRATION_URL"


def database_url(text: str) -> str:
    """A ``postgresql://`` URL that libpq reads as written. A password holding ``#``, ``/``, ``?``
    or ``@`` unencoded would be read as another part of the URL, and quoted in a later error."""
    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise Invalid("must start with postgresql://")
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number: often the rest of a password
        port_ok = False
    if not port_ok or parts.fragment or parts.netloc.count("@") > 1 or "@" in parts.path + parts.query:
        raise Invalid(UNPARSABLE_URI)
    if not parts.path.strip("/"):
        raise Invalid("names no database: add /<database> after the host")
    return text


def show_url(text: str) -> str:
    """The URL without its password, wherever it is (user information or query)."""
    location, question, query = redacted_uri(text).partition("?")
    return location + question + SECRET_PARAMETERS.sub(r"\1***", query)


def _show_optional_url(url: str | None) -> str | None:
    return None if url is None else show_url(url)


@dataclass(frozen=True)
class DatabaseSettings:
    """The database's rows of the settings table."""

    url: str = field(
        metadata=read(
            "DATABASE_URL",
            database_url,
            missing="not set: postgresql://<role>:<password>@<host>/<database>?sslmode=verify-full",
            from_file=True,
            show=show_url,
        )
    )
    # The longest a request waits for a connection that answers: to open one, or for one to
    # come free, and for its first statement.
    connect_timeout: int = field(metadata=read("DATABASE_CONNECT_TIMEOUT", whole(2, 60), "2"))
    # The longest one statement runs on the server before it is cancelled (a server that cannot
    # cancel it, being stopped, is given up a second later: store.ANSWER_SLACK).
    statement_timeout: int = field(metadata=read("DATABASE_STATEMENT_TIMEOUT", whole(1, 300), "5"))
    # Connections this host may open in all: each worker gets its share.
    max_connections: int = field(metadata=read("DATABASE_MAX_CONNECTIONS", whole(1, 10_000), "10"))
    # What `alembic upgrade head` connects as: the role that owns the tables. Never used by the
    # service, whose own role must own nothing; unset, alembic migrates as DATABASE_URL's role.
    migration_url: str | None = field(
        metadata=read(MIGRATION_URL, database_url, from_file=True, show=_show_optional_url)
    )
