"""How one environment variable becomes one typed value; errors that name the variable and never
quote the value, which may be a secret.

The machinery of the settings tables: ``settings.py`` holds the service's, and
``database_settings.py`` the database's, so that neither imports the other's module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

UNPARSABLE_URI = "cannot be parsed: percent-encode '#', '/', '?', '@', '[' and ']' in the password"


class ConfigError(ValueError):
    """One line naming the variable and the problem. Never carries a value."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class Invalid(ValueError):
    """Raised by a parser: the problem, in words that never quote the value."""


@dataclass(frozen=True)
class Variable:
    """How one environment variable becomes one field of :class:`Settings`."""

    name: str
    parse: Callable[[str], Any]
    default: str | Callable[[Mapping[str, Any]], str | None] | None = None
    missing: str | None = None  # set for a required variable: the problem to report
    from_file: bool = False  # NAME_FILE may name a file that holds the value (container secrets)
    show: Callable[[Any], object] = lambda value: value  # how `describe` shows it: never a secret


def read(name: str, parse: Callable[[str], Any], default: Any = None, **options: Any) -> dict[str, Variable]:
    """The metadata of a :class:`Settings` field: how its variable is read."""
    return {"variable": Variable(name, parse, default, **options)}


# --- parsers: text in, value out, or Invalid with a message that never quotes the text ---------


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise Invalid(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def whole(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Invalid("must be a whole number") from None
        if not low <= value <= high:
            raise Invalid(f"must be between {low} and {high}")
        return value

    return parse


def flag(text: str) -> bool:
    value = text.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise Invalid("must be true or false")
    return value in ("true", "1", "yes")


def redacted_uri(text: str) -> str:
    """The URI without its credentials, for display."""
    scheme, _, rest = text.partition("://")
    credentials, at, location = rest.rpartition("@")
    return f"{scheme}://***@{location}" if at and credentials else text
