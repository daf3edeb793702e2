"""The ``keys`` command line (new, roll, check), so an operator never types a digest by hand and
no message it writes echoes a key.

argparse quotes what it refuses ("unrecognized arguments: ...", "invalid choice: ..."): a key
pasted among the arguments would reach the terminal, and every CI log that captured it. So every
error this command writes, argparse's included, is masked first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from .entries import (
    DEFAULT_TENANT,
    ApiKey,
    EntryError,
    MintedKey,
    Network,
    expiry_within,
    format_expiry,
    mint,
    parse_entry,
    parse_expiry,
    parse_limit,
    parse_network,
    split_entries,
)
from .format import KEY_PREFIX, MIN_KEY_PIECE, key_pattern
from .ring import KeyRing
from .roll import MAX_OVERLAP_HOURS, KeysFile, roll, roll_in_text

MASK = "[MASKED]"
# A piece of a key with its prefix, or a run of the key alphabet that mixes digits, capitals and
# small letters as a key's body does (a key pasted without its prefix). Names, words, hex digests
# and dates lack one of the three. The lookbehind starts a run only at its beginning: linear.
KEY_PIECES = re.compile(
    key_pattern(KEY_PREFIX, MIN_KEY_PIECE)
    + "|(?<![0-9A-Za-z])(?=[0-9A-Za-z]*[0-9])(?=[0-9A-Za-z]*[A-Z])(?=[0-9A-Za-z]*[a-z])[0-9A-Za-z]{"
    + f"{MIN_KEY_PIECE},"
    + "}"
)
Lifetime = Callable[[], int | None]


def masked(text: str) -> str:
    """``text`` with anything that may be a key, or a piece of one, replaced by a marker."""
    return KEY_PIECES.sub(MASK, text)


class _Parser(argparse.ArgumentParser):
    """argparse, with its error messages masked: they quote the arguments they refuse."""

    def error(self, message: str) -> NoReturn:
        # argparse documents error(message) as what prints a refusal and exits, and builds
        # subparsers of the parser's own class; the tests pin that unrecognized arguments,
        # invalid choices and refused values all come through here.
        super().error(masked(message))


def _refuse(message: str) -> int:
    print(f"error: {masked(message)}", file=sys.stderr)
    return 2


def _expiry(text: str) -> dt.date:
    try:
        return parse_expiry(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected YYYY-MM-DD or YYYY-MM-DDTHH:MMZ (UTC)") from None


def _limit(text: str) -> str:
    try:
        return parse_limit(text)
    except EntryError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _network(text: str) -> Network:
    try:
        return parse_network(text)
    except EntryError:
        raise argparse.ArgumentTypeError("expected a network such as 10.0.0.0/8, host bits clear") from None


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= MAX_OVERLAP_HOURS:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of hours above 0, at most {MAX_OVERLAP_HOURS}")
    return hours


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"python -m {__package__}")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="mint a key and print it once with its entry")
    new.add_argument("--id", required=True, help="a name for the key, shown in logs")
    new.add_argument("--scope", action="append", required=True, help="repeat for more scopes")
    new.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="whose data the key reaches (default: %(default)s)"
    )
    new.add_argument(
        "--expires",
        type=_expiry,
        help="refused from this day or instant, UTC (default: never, or KEY_MAX_LIFETIME_DAYS ahead)",
    )
    new.add_argument("--limit", type=_limit, help="its own rate limit, replacing RATELIMIT_DEFAULT")
    new.add_argument("--net", type=_network, action="append", help="a network it may be used from (repeat)")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    roll_ = commands.add_parser("roll", help="mint the successor of an entry; expire the old one in HOURS")
    source = roll_.add_mutually_exclusive_group()
    source.add_argument("entry", nargs="?", help="the old entry; read from standard input if absent")
    source.add_argument("--file", type=Path, help="a keys file to rewrite in place (with --id)")
    roll_.add_argument("--id", help="with --file: the id of the entry to roll")
    roll_.add_argument("--overlap", type=_hours, required=True, help="hours both keys work")
    roll_.add_argument(
        "--expires",
        type=_expiry,
        help="the successor's expiry (default: never, or KEY_MAX_LIFETIME_DAYS ahead)",
    )
    roll_.add_argument("--json", action="store_true", help="machine-readable output")
    check = commands.add_parser("check", help="validate entries and describe them, no secrets")
    check.add_argument("entries", nargs="*", help="entries; read from standard input if none")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _print_minted(minted: MintedKey, where: str = "add it to API_KEYS or API_KEYS_FILE") -> None:
    print(f"key (shown once, give it to the client):\n  {minted.secret}")
    print(f"entry ({where}):\n  {minted.entry}")


def _print_rolled(
    successor: MintedKey, retired: ApiKey, *, json_output: bool, path: Path | None = None
) -> None:
    if json_output:
        print(json.dumps({"key": successor.secret, "entry": successor.entry, "old_entry": retired.entry()}))
        return
    assert retired.expires is not None  # a roll always gives the old entry one
    refused = f"its key is refused from {format_expiry(retired.expires)}"
    if path is None:
        _print_minted(successor)
        print(f"old entry (replace the old one with it; {refused}):\n  {retired.entry()}")
    else:
        _print_minted(successor, f"added to {path}")
        print(f"old entry (rewritten in place; {refused}):\n  {retired.entry()}")


def _new(args: argparse.Namespace, now: dt.datetime, max_days: int | None) -> int:
    try:
        expires = expiry_within(args.expires, now=now, max_days=max_days)
    except EntryError as error:
        return _refuse(f"--expires {error}")
    try:
        minted = mint(
            KEY_PREFIX,
            key_id=args.id,
            scopes=args.scope,
            tenant=args.tenant,
            expires=expires,
            limit=args.limit,
            nets=args.net or (),
        )
    except EntryError as error:
        return _refuse(f"key {error}")
    if args.json:
        print(json.dumps({"key": minted.secret, "entry": minted.entry, **minted.key.describe()}))
    else:
        _print_minted(minted)
    return 0


def _roll(args: argparse.Namespace, now: dt.datetime, max_days: int | None) -> int:
    if (args.file is None) != (args.id is None):
        return _refuse("--file and --id go together: the file to rewrite and the entry in it to roll")
    try:
        expires = expiry_within(args.expires, now=now, max_days=max_days)
    except EntryError as error:
        return _refuse(f"--expires {error}")
    overlap = dt.timedelta(hours=args.overlap)
    if max_days is not None and overlap > dt.timedelta(days=max_days):
        return _refuse(
            f"--overlap is longer than the maximum lifetime, {max_days} days (KEY_MAX_LIFETIME_DAYS)"
        )
    if args.file is not None:
        return _roll_file(args, overlap, now, expires)
    entries = split_entries(args.entry if args.entry is not None else sys.stdin.read())
    if len(entries) != 1:
        return _refuse("give exactly one entry to roll")
    if entries[0].startswith(f"{KEY_PREFIX}_"):
        return _refuse("that is a raw key: roll its entry, not the key")
    try:
        successor, retired = roll(
            KEY_PREFIX, parse_entry(entries[0]), overlap=overlap, now=now, expires=expires
        )
    except EntryError as error:
        return _refuse(f"entry {error}")
    _print_rolled(successor, retired, json_output=args.json)
    return 0


def _roll_file(
    args: argparse.Namespace, overlap: dt.timedelta, now: dt.datetime, expires: dt.date | None
) -> int:
    path: Path = args.file
    try:
        keys_file = KeysFile.read(path)
    except (OSError, UnicodeDecodeError) as error:
        return _refuse(f"{path}: cannot read it ({type(error).__name__})")
    try:
        successor, retired, text = roll_in_text(
            keys_file.text, args.id, prefix=KEY_PREFIX, overlap=overlap, now=now, expires=expires
        )
        staged = keys_file.stage(text)
    except EntryError as error:
        return _refuse(f"{path}: {error}; nothing changed")
    except OSError as error:
        return _refuse(
            f"{path}: cannot write beside it with its mode and owner ({_why(error)}); nothing changed"
        )
    try:
        # The key is shown before the file names its successor: were it lost after the rename,
        # the old key would die on schedule with no client holding the new one.
        _print_rolled(successor, retired, json_output=args.json, path=path)
        sys.stdout.flush()
    except OSError as error:
        staged.discard()
        return _refuse(f"{path}: not rewritten ({_why(error)}); the key printed is void")
    try:
        staged.commit()
    except OSError as error:
        return _refuse(f"{path}: not rewritten ({_why(error)}); the key printed is void")
    if not args.json:
        print(f"{path} rewritten: send HUP to the gunicorn master to apply it")
    return 0


def _why(error: OSError) -> str:
    return error.strerror or str(error)


def _check(args: argparse.Namespace) -> int:
    text = "\n".join(args.entries) if args.entries else sys.stdin.read()
    try:
        ring = KeyRing.from_text(KEY_PREFIX, text)
    except EntryError as error:
        print(f"error: {masked(str(error))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([key.describe() for key in ring]))
        return 0
    for key in ring:
        print(
            f"{key.key_id}: tenant={key.tenant} scopes={','.join(sorted(key.scopes))} "
            f"expires={format_expiry(key.expires) if key.expires else 'never'} "
            f"limit={key.limit or 'RATELIMIT_DEFAULT'} "
            f"nets={','.join(map(str, key.nets)) or 'any'}"
        )
    return 0


def main(argv: Sequence[str] | None = None, *, max_lifetime: Lifetime = lambda: None) -> int:
    """Run one command. ``max_lifetime`` gives the days that new expiries may reach, or None:
    ``python -m`` passes the service's KEY_MAX_LIFETIME_DAYS."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    try:
        max_days = max_lifetime()
    except ValueError as error:  # the settings' ConfigError: one line naming the variable
        return _refuse(str(error))
    now = dt.datetime.now(dt.UTC)
    return _new(args, now, max_days) if args.command == "new" else _roll(args, now, max_days)
