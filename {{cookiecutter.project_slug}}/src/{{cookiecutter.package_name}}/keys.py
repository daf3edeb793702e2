"""API keys: minting, the entry format and verification, so no key is stored or compared raw.

A key looks like ``<prefix>_<43 base62 characters><6 base62 characters>``: 256 bits from
:mod:`secrets`, then a CRC32 checksum of everything before it. The prefix lets secret
scanners find leaked keys; the checksum lets the service discard a mistyped key before
any lookup.

The service never holds a key, only an *entry*::

    id=ci-deploy;tenant=acme;scopes=items:read+items:write;expires=2027-01-01;sha256=<hex>

Why verification leaks nothing through timing, whatever the number of keys:

* The shape and checksum checks look only at the presented string; their timing can
  reveal nothing about a configured key.
* The lookup is one dictionary probe by ``sha256(presented)``. A caller controls the key,
  not its digest: timing differences in the probe could at most tell how far a digest of a
  guess matches a stored digest, which says nothing about any key (SHA-256 is preimage
  resistant). This is why there is no ``compare_digest`` loop over keys: such a loop is
  constant-time per comparison but linear in the number of keys, and it leaks which key
  matched by when it stopped.
* A dictionary probe costs the same for 1 or 5,000 entries (the template's ``bench/bench_keys.py``).

A plain SHA-256 is the right digest here: keys carry 256 bits of entropy, so there is
nothing for a slow password hash to protect (ASVS 5.0 accepts a fast hash for secrets of at
least 112 bits), and a slow hash would make every request slow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import secrets
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 43  # 62**43 > 2**256: every 256-bit value fits.
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: every CRC32 value fits.
RANDOM_BYTES = 32
# After the prefix, this many characters of the key alphabet are treated as (part of) a key.
MIN_KEY_PIECE = 12

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TENANT_PATTERN = ID_PATTERN
SCOPE_PATTERN = re.compile(r"[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
PLACEHOLDER_DIGEST = "0" * 64
DEFAULT_TENANT = "default"
FIELDS = frozenset({"id", "tenant", "scopes", "expires", "sha256"})
KEY_PREFIX = "{{ cookiecutter.key_prefix }}"


class InvalidKey(Exception):
    """A presented key is not accepted. The subclasses exist for logs, metrics and tests only:
    callers answer every one of them the same way."""

    reason = "invalid"


class MalformedKey(InvalidKey):
    """Wrong length, alphabet, prefix or checksum: rejected before any lookup."""

    reason = "malformed"


class UnknownKey(InvalidKey):
    """Well formed, but no entry holds its digest."""

    reason = "unknown"


class ExpiredKey(InvalidKey):
    """Its entry has expired."""

    reason = "expired"


class EntryError(ValueError):
    """A configured entry is unusable. The message never contains the entry's text."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the service knows about a key: everything but the key."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    digest: bytes
    expires: dt.date | None = None

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today >= self.expires

    def entry(self) -> str:
        fields = [
            f"id={self.key_id}",
            f"tenant={self.tenant}",
            f"scopes={'+'.join(sorted(self.scopes))}",
        ]
        if self.expires is not None:
            fields.append(f"expires={self.expires.isoformat()}")
        fields.append(f"sha256={self.digest.hex()}")
        return ";".join(fields)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "expires": self.expires.isoformat() if self.expires else None,
        }


@dataclass(frozen=True, slots=True)
class MintedKey:
    secret: str
    key: ApiKey

    @property
    def entry(self) -> str:
        return self.key.entry()


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def checksum(text: str) -> str:
    """The characters that end a key: a base62 CRC32 of everything before them. It catches
    typos and lets scanners tell a key from lookalikes; it proves nothing (anyone can compute it)."""
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def mint(
    prefix: str,
    *,
    key_id: str,
    scopes: Iterable[str],
    tenant: str = DEFAULT_TENANT,
    expires: dt.date | None = None,
) -> MintedKey:
    """Create a new key and the entry that lets the service accept it."""
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_LENGTH)
    secret = f"{prefix}_{body}"
    secret += checksum(secret)
    key = ApiKey(key_id, tenant, frozenset(scopes), digest(secret), expires)
    _validate(key)
    return MintedKey(secret, key)


def key_pattern(prefix: str, shortest: int = BODY_LENGTH + CHECKSUM_LENGTH) -> str:
    """A regular expression for this service's keys (or, with ``shortest``, any piece of one at
    least that long after the prefix), for secret scanners and log masking."""
    return re.escape(prefix) + "_[0-9A-Za-z]{" + f"{shortest},{BODY_LENGTH + CHECKSUM_LENGTH}" + "}"


def _looks_like_a_key(text: str) -> bool:
    # Ids and tenants are logged and shown everywhere: a key pasted as one must not be.
    return re.search(key_pattern(KEY_PREFIX, MIN_KEY_PIECE), text) is not None


def _validate(key: ApiKey) -> None:
    for name, value in (("id", key.key_id), ("tenant", key.tenant)):
        if not ID_PATTERN.fullmatch(value):
            raise EntryError(f"{name} must be 1-64 letters, digits, '.', '_' or '-'")
        if _looks_like_a_key(value):
            raise EntryError(f"{name} looks like an API key: name the key, do not paste it")
    if not key.scopes:
        raise EntryError("needs at least one scope")
    for scope in key.scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise EntryError("scopes must look like 'items:read'")


def parse_entry(text: str) -> ApiKey:
    """Parse one entry. Errors name the field at fault, never the entry's content."""
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name in fields:
            raise EntryError("is not an entry printed by 'keys new' (expected id=...;sha256=...)")
        fields[name] = value.strip()
    if not set(fields) <= FIELDS:
        # Never the field's name: a key pasted into an entry would be one.
        raise EntryError(f"has an unknown field (known: {', '.join(sorted(FIELDS))})")
    for required in ("id", "scopes", "sha256"):
        if required not in fields:
            raise EntryError(f"has no {required} field")
    if not DIGEST_PATTERN.fullmatch(fields["sha256"]):
        raise EntryError("sha256 must be 64 lowercase hexadecimal digits")
    if fields["sha256"] == PLACEHOLDER_DIGEST:
        raise EntryError("is the placeholder from .env.example: mint a key with 'keys new'")
    expires = None
    if "expires" in fields:
        try:
            expires = dt.date.fromisoformat(fields["expires"])
        except ValueError:
            raise EntryError("expires must be a date, YYYY-MM-DD") from None
    key = ApiKey(
        key_id=fields["id"],
        tenant=fields.get("tenant", DEFAULT_TENANT),
        scopes=frozenset(s for s in fields["scopes"].split("+") if s),
        digest=bytes.fromhex(fields["sha256"]),
        expires=expires,
    )
    _validate(key)
    return key


def split_entries(text: str) -> list[str]:
    """Entries are separated by commas or newlines; blank lines and ``#`` comments are skipped."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return [part.strip() for line in lines for part in line.split(",") if part.strip()]


class KeyRing:
    """The configured keys, indexed by digest. Build it once at start; it never changes."""

    def __init__(self, prefix: str, keys: Iterable[ApiKey]) -> None:
        self._shape = re.compile(key_pattern(prefix))
        self._length = len(prefix) + 1 + BODY_LENGTH + CHECKSUM_LENGTH
        self._by_digest: dict[bytes, ApiKey] = {}
        first_with_id: dict[str, int] = {}
        for position, key in enumerate(keys, start=1):
            if key.key_id in first_with_id:
                raise EntryError(f"entry {position} has the same id as entry {first_with_id[key.key_id]}")
            if key.digest in self._by_digest:
                raise EntryError(f"entry {position} has the same digest as another entry")
            first_with_id[key.key_id] = position
            self._by_digest[key.digest] = key

    @classmethod
    def from_text(cls, prefix: str, text: str) -> KeyRing:
        """Parse entries; an error names the entry by position, never by content."""
        keys = []
        for position, part in enumerate(split_entries(text), start=1):
            if part.startswith(f"{prefix}_"):
                raise EntryError(f"entry {position} is a raw key: configure its entry, not the key")
            try:
                keys.append(parse_entry(part))
            except EntryError as error:
                raise EntryError(f"entry {position} {error}") from None
        if not keys:
            raise EntryError("holds no entries")
        return cls(prefix, keys)

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(sorted(self._by_digest.values(), key=lambda key: key.key_id))

    def is_well_formed(self, presented: str) -> bool:
        """Shape and checksum only: decides nothing about validity, needs no secret."""
        return (
            len(presented) == self._length
            and self._shape.fullmatch(presented) is not None
            and checksum(presented[:-CHECKSUM_LENGTH]) == presented[-CHECKSUM_LENGTH:]
        )

    def verify(self, presented: str, today: dt.date | None = None) -> ApiKey:
        """Return the key's entry, or raise a subclass of :class:`InvalidKey`."""
        if not self.is_well_formed(presented):
            raise MalformedKey
        key = self._by_digest.get(digest(presented))
        if key is None:
            raise UnknownKey
        if key.expired(today or dt.datetime.now(dt.UTC).date()):
            raise ExpiredKey
        return key


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected YYYY-MM-DD") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="mint a key and print it once with its entry")
    new.add_argument("--id", required=True, help="a name for the key, shown in logs")
    new.add_argument("--scope", action="append", required=True, help="repeat for more scopes")
    new.add_argument("--tenant", default=DEFAULT_TENANT, help="whose data the key reaches")
    new.add_argument("--expires", type=_date, help="first day the key is refused (UTC)")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    check = commands.add_parser("check", help="validate entries and describe them, no secrets")
    check.add_argument("entries", nargs="*", help="entries; read from standard input if none")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None, prefix: str = KEY_PREFIX) -> int:
    args = _parser().parse_args(argv)
    if args.command == "new":
        if args.expires is not None and args.expires <= dt.datetime.now(dt.UTC).date():
            print("error: --expires is not in the future: the key would be refused at once", file=sys.stderr)
            return 2
        try:
            minted = mint(prefix, key_id=args.id, scopes=args.scope, tenant=args.tenant, expires=args.expires)
        except EntryError as error:
            print(f"error: key {error}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps({"key": minted.secret, "entry": minted.entry, **minted.key.describe()}))
        else:
            print(f"key (shown once, give it to the client):\n  {minted.secret}")
            print(f"entry (add it to API_KEYS or API_KEYS_FILE):\n  {minted.entry}")
        return 0
    text = "\n".join(args.entries) if args.entries else sys.stdin.read()
    try:
        ring = KeyRing.from_text(prefix, text)
    except EntryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([key.describe() for key in ring]))
    else:
        for key in ring:
            expires = key.expires.isoformat() if key.expires else "never"
            print(
                f"{key.key_id}: tenant={key.tenant} scopes={','.join(sorted(key.scopes))} expires={expires}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
