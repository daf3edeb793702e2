"""``keys revoke``, ``keys unrevoke`` and ``keys report``: the commands that write and read the
service's own records of its keys, so an operator revokes a leaked key on every server without
editing a file, and finds the keys no one uses.

They reach the database through the store the service uses (``stores/key_records.py``), handed in
by ``python -m <package>.keys``: this package imports no database driver. A revocation names a key
id, never a key, and each change is logged as one JSON line saying who made it and where.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from .entries import ID_PATTERN, ApiKey, format_expiry
from .format import KEY_PREFIX, holds_a_key
from .ring import KeyRing

logger = logging.getLogger(__name__)

CLI = "cli"
LONGEST_REASON = 200
LONGEST_STALE_DAYS = 36_500
SECONDS = "%Y-%m-%dT%H:%M:%SZ"


class Revocation(Protocol):
    @property
    def reason(self) -> str | None: ...

    @property
    def revoked_by(self) -> str: ...

    @property
    def revoked_at(self) -> dt.datetime: ...


class Records(Protocol):
    """The service's store of key records, as these commands use it."""

    @property
    def variable(self) -> str:
        """The setting that names the database (ITEMS_DB, DATABASE_URL), for messages."""

    def revoke(
        self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime
    ) -> Revocation | None: ...

    def unrevoke(self, key_id: str) -> bool: ...

    def revocations(self) -> Mapping[str, Revocation]: ...

    def last_uses(self) -> Mapping[str, dt.datetime]: ...


@dataclass(frozen=True)
class Service:
    """What these commands need of the service: its configured keys and its database. Each raises
    ValueError with one line naming the variable (the settings' ConfigError) when it cannot."""

    keys: Callable[[], KeyRing]
    records: Callable[[], AbstractContextManager[Records]]


class Refused(Exception):
    """One line for the operator; it never quotes a key."""


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the three commands with ``add_parser`` (the ``add_parser`` of argparse's subparsers)."""
    revoke = add_parser("revoke", help="refuse a key id on every server within 2 s")
    revoke.add_argument("--id", required=True, type=_key_id, help="the key's id (never the key)")
    revoke.add_argument("--reason", type=_reason, help="why, for the log and the report (200 characters)")
    unrevoke = add_parser("unrevoke", help="accept a revoked key id again")
    unrevoke.add_argument("--id", required=True, type=_key_id, help="the key's id")
    report = add_parser("report", help="every configured key: tenant, scopes, expiry, last use, revocation")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--stale", type=_days, metavar="DAYS", help="only the keys not used for DAYS days")


def _key_id(text: str) -> str:
    if holds_a_key(text, KEY_PREFIX):
        raise argparse.ArgumentTypeError(
            "that holds a key, not an id: give the key's id (keys report lists them), "
            "or send the key to POST /v1/keys/revoke"
        )
    if not ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError("expected a key id: letters, digits, '.', '_', '-' (and '~N')")
    return text


def _reason(text: str) -> str:
    if len(text) > LONGEST_REASON or not text.isprintable() or holds_a_key(text, KEY_PREFIX):
        raise argparse.ArgumentTypeError(
            f"expected at most {LONGEST_REASON} printable characters, and no key"
        )
    return text


def _days(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= LONGEST_STALE_DAYS:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, 1 to {LONGEST_STALE_DAYS}")
    return int(text)


def run(args: argparse.Namespace, service: Service) -> int:
    """One of the records commands; Refused for anything the operator must fix."""
    # The report needs the keys: read first, so a missing API_KEYS is named before any database.
    ring = _configured(service) if args.command == "report" else None
    with _records(service) as records:
        if ring is not None:
            return _report(records, ring, json_output=args.json, stale_days=args.stale)
        if args.command == "revoke":
            return _revoke(records, service, args.id, args.reason)
        return _unrevoke(records, args.id)


@contextmanager
def _records(service: Service) -> Iterator[Records]:
    try:
        with service.records() as records:
            try:
                yield records
            except Refused:
                raise
            except Exception as error:  # noqa: BLE001 - whatever the driver raises: its type, no text
                raise Refused(
                    f"{records.variable}: the key records could not be read or written "
                    f"({type(error).__name__}); check that the database answers and that its schema "
                    "is current (make migrate)"
                ) from None
    except ValueError as error:  # a database that cannot be opened, its setting named
        raise Refused(str(error)) from None


def _configured(service: Service) -> KeyRing:
    try:
        return service.keys()
    except ValueError as error:  # the settings' ConfigError: one line naming API_KEYS
        raise Refused(str(error)) from None


def _origin() -> dict[str, str]:
    """Who and where, for the log line: the account and the host the command ran on."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no password entry, as in many containers
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def _revoke(records: Records, service: Service, key_id: str, reason: str | None) -> int:
    configured = _is_configured(service, key_id)
    earlier = records.revoke(key_id, reason=reason, revoked_by=CLI, at=dt.datetime.now(dt.UTC))
    if earlier is not None:
        when = f"on {_seconds(earlier.revoked_at)} by {earlier.revoked_by}"
        print(f"{key_id} was revoked already, {when}: nothing changed")
        return 0
    logger.info(
        "key revoked",
        extra={"key_id": key_id, "reason": reason, "revoked_by": CLI, "configured": configured, **_origin()},
    )
    print(f"revoked {key_id}: every worker of every server refuses it within 2 s, across restarts")
    if configured is False:
        print(f"note: no entry of the service's keys has the id {key_id}; recorded anyway")
    elif configured is None:
        print(f"note: the service's keys cannot be read here, so {key_id} was not checked; recorded anyway")
    print(f"undo with: keys unrevoke --id {key_id}")
    return 0


def _is_configured(service: Service, key_id: str) -> bool | None:
    """Whether an entry has ``key_id``; None when the keys cannot be read from here."""
    try:
        ring = service.keys()
    except ValueError:
        return None
    return any(key.key_id == key_id for key in ring)


def _unrevoke(records: Records, key_id: str) -> int:
    if not records.unrevoke(key_id):
        print(f"{key_id} was not revoked: nothing changed")
        return 0
    logger.info("key unrevoked", extra={"key_id": key_id, "unrevoked_by": CLI, **_origin()})
    print(f"unrevoked {key_id}: every worker accepts it again within 2 s")
    return 0


def _report(records: Records, ring: KeyRing, *, json_output: bool, stale_days: int | None) -> int:
    revocations, last_uses = records.revocations(), records.last_uses()
    since = None if stale_days is None else dt.datetime.now(dt.UTC) - dt.timedelta(days=stale_days)
    rows = [
        Row(key, last_uses.get(key.key_id), revocations.get(key.key_id))
        for key in ring
        if since is None or _stale(last_uses.get(key.key_id), since)
    ]
    if json_output:
        print(json.dumps([row.describe() for row in rows]))
    else:
        for row in rows:
            print(row.line())
    return 0


def _stale(last_used: dt.datetime | None, since: dt.datetime) -> bool:
    """Not used since ``since``; a key never used is stale too."""
    return last_used is None or last_used < since


def _seconds(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(SECONDS)


@dataclass(frozen=True)
class Row:
    """One configured key in the report."""

    key: ApiKey
    last_used: dt.datetime | None
    revoked: Revocation | None

    def describe(self) -> dict[str, object]:
        revoked = self.revoked
        return {
            "id": self.key.key_id,
            "tenant": self.key.tenant,
            "scopes": sorted(self.key.scopes),
            "expires": None if self.key.expires is None else format_expiry(self.key.expires),
            "last_used": None if self.last_used is None else format_expiry(self.last_used),
            "revoked": None
            if revoked is None
            else {"reason": revoked.reason, "by": revoked.revoked_by, "at": _seconds(revoked.revoked_at)},
        }

    def line(self) -> str:
        key, revoked = self.key, self.revoked
        if revoked is None:
            state = "not revoked"
        else:
            why = f" ({revoked.reason})" if revoked.reason else ""
            state = f"revoked {_seconds(revoked.revoked_at)} by {revoked.revoked_by}{why}"
        expires = "never" if key.expires is None else format_expiry(key.expires)
        last_used = "never" if self.last_used is None else format_expiry(self.last_used)
        return (
            f"{key.key_id}: tenant={key.tenant} scopes={','.join(sorted(key.scopes))} "
            f"expires={expires} last_used={last_used} {state}"
        )
