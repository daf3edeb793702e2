"""API keys: minting, the entry format and verification, so no key is stored or compared raw.

A key looks like ``<prefix>_<43 base62 characters><6 base62 characters>``: 256 bits from
:mod:`secrets`, then a CRC32 checksum of everything before it. The prefix lets secret
scanners find leaked keys; the checksum lets the service discard a mistyped key before
any lookup.

The service never holds a key, only an *entry*::

    id=ci-deploy;tenant=acme;scopes=items:read+items:write;expires=2027-01-01;sha256=<hex>

Optional fields narrow what a stolen key can do: ``expires`` (a date, refused from that day,
or an instant such as ``2027-01-01T12:00Z``; UTC either way), ``limit`` (the key's own rate
limit, windows joined by ``+``: ``10/second+1000/hour``) and ``nets`` (the networks it may be
used from: ``10.0.0.0/8+2001:db8::/32``). ``keys roll`` makes a successor of an entry, with the
next generation of its id (``ci-deploy`` -> ``ci-deploy.2`` -> ``ci-deploy.3``), and gives the
old entry an expiry a few hours away, so both keys work while clients move.

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
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import math
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
FIELDS = frozenset({"id", "tenant", "scopes", "expires", "limit", "nets", "sha256"})
KEY_PREFIX = "{{ cookiecutter.key_prefix }}"
# An instant is written in UTC to the minute: one spelling, so no entry depends on a time zone.
INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}Z")
INSTANT_FORMAT = "%Y-%m-%dT%H:%MZ"
# One window in Flask-Limiter's notation ("1000 per hour", "10/second", "5 per 10 minutes"): a
# subset of what its parser reads, so every limit an entry holds means the same to both, and
# with the same refusals as RATELIMIT_DEFAULT (settings.rate_limits; a test holds them equal).
LIMIT_WINDOW = re.compile(
    r"(?P<amount>[0-9]+)\s*(?:/|per)\s*(?P<multiples>[0-9]+)?\s*(?:second|minute|hour|day|month|year)s?",
    re.IGNORECASE,
)
LIMIT_SEPARATORS = re.compile(r"[+;,|]")
# A successor's id is the stem and the next generation: ci-deploy, ci-deploy.2, ci-deploy.3.
GENERATION = re.compile(r"(?P<stem>.+)\.(?P<generation>[1-9][0-9]{0,8})")
MAX_OVERLAP_HOURS = 8760
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    expires: dt.date | dt.datetime | None = None  # a date, or an instant (UTC, to the minute)
    limit: str | None = None  # its own rate limit, in Flask-Limiter's notation (";" between windows)
    nets: tuple[Network, ...] = ()  # where it may be used from; empty: anywhere

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and refused_at(self.expires, now)

    def allows(self, address: str | None) -> bool:
        """True when the key may be used from ``address``, the client as the trusted proxies
        report it. An address that cannot be read is outside every network."""
        if not self.nets:
            return True
        try:
            client = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        # A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d.
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            client = client.ipv4_mapped
        return any(client in network for network in self.nets)

    def entry(self) -> str:
        fields = [
            f"id={self.key_id}",
            f"tenant={self.tenant}",
            f"scopes={'+'.join(sorted(self.scopes))}",
        ]
        if self.expires is not None:
            fields.append(f"expires={format_expiry(self.expires)}")
        if self.limit is not None:
            fields.append(f"limit={self.limit.replace(';', '+')}")
        if self.nets:
            fields.append(f"nets={'+'.join(map(str, self.nets))}")
        fields.append(f"sha256={self.digest.hex()}")
        return ";".join(fields)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "expires": format_expiry(self.expires) if self.expires else None,
            "limit": self.limit,
            "nets": [str(network) for network in self.nets],
        }


@dataclass(frozen=True, slots=True)
class MintedKey:
    secret: str
    key: ApiKey

    @property
    def entry(self) -> str:
        return self.key.entry()


def refused_from(expires: dt.date) -> dt.datetime:
    """The instant from which an entry's key is refused: a date means its first minute, UTC."""
    if isinstance(expires, dt.datetime):
        return expires
    return dt.datetime.combine(expires, dt.time(), dt.UTC)


def refused_at(expires: dt.date, now: dt.datetime) -> bool:
    """Whether an entry expiring at ``expires`` refuses its key at ``now``: the one boundary that
    verification and the CLI's refusal of an expiry not in the future share."""
    return now >= refused_from(expires)


def format_expiry(expires: dt.date) -> str:
    if isinstance(expires, dt.datetime):
        return expires.astimezone(dt.UTC).strftime(INSTANT_FORMAT)
    return expires.isoformat()


def parse_expiry(text: str) -> dt.date | dt.datetime:
    """A date (``2027-01-01``) or an instant (``2027-01-01T12:00Z``); ValueError otherwise."""
    if INSTANT.fullmatch(text):
        return dt.datetime.strptime(text, INSTANT_FORMAT).replace(tzinfo=dt.UTC)
    return dt.date.fromisoformat(text)


def parse_limit(text: str) -> str:
    """A rate limit of one or more windows (joined by ``+``, or by Flask-Limiter's ``;``, ``,``
    or ``|``), returned in Flask-Limiter's notation. Refuses what would lock the key out (an
    amount of zero) or mean something else than written (a window of zero, which Flask-Limiter
    would read as one)."""
    windows = [window.strip() for window in LIMIT_SEPARATORS.split(text)]
    matches = [LIMIT_WINDOW.fullmatch(window) for window in windows]
    if not all(matches):
        raise EntryError("limit must be a rate limit such as '1000 per hour' or '10/second+1000/hour'")
    for match in matches:
        assert match is not None
        if int(match["amount"]) < 1 or (match["multiples"] is not None and int(match["multiples"]) < 1):
            raise EntryError("limit needs at least one request per window of at least one second")
    return ";".join(windows)


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        raise EntryError("nets must be networks such as 10.0.0.0/8+2001:db8::/32, host bits clear") from None


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
    limit: str | None = None,
    nets: Iterable[Network] = (),
) -> MintedKey:
    """Create a new key and the entry that lets the service accept it."""
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_LENGTH)
    secret = f"{prefix}_{body}"
    secret += checksum(secret)
    own_limit = parse_limit(limit) if limit is not None else None
    key = ApiKey(key_id, tenant, frozenset(scopes), digest(secret), expires, own_limit, tuple(nets))
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


def roll(
    prefix: str, old: ApiKey, *, overlap: dt.timedelta, now: dt.datetime, expires: dt.date | None = None
) -> tuple[MintedKey, ApiKey]:
    """A successor of ``old`` (same tenant, scopes, limit and networks; the next generation of
    its id), and ``old`` refused from ``overlap`` after ``now``, rounded up to the minute.

    A roll never extends a key's life: an old entry that expires sooner keeps its expiry.
    """
    match = GENERATION.fullmatch(old.key_id)
    stem, generation = (match["stem"], int(match["generation"])) if match else (old.key_id, 1)
    successor = mint(
        prefix,
        key_id=f"{stem}.{generation + 1}",
        scopes=old.scopes,
        tenant=old.tenant,
        expires=expires,
        limit=old.limit,
        nets=old.nets,
    )
    later = (now + overlap).astimezone(dt.UTC)
    retire = later.replace(second=0, microsecond=0)
    if retire < later:
        retire += dt.timedelta(minutes=1)
    if old.expires is None or refused_from(old.expires) > retire:
        old = dataclasses.replace(old, expires=retire)
    return successor, old


def _fields(text: str) -> dict[str, str]:
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
    return fields


def _entry_expiry(text: str) -> dt.date:
    try:
        return parse_expiry(text)
    except ValueError:
        raise EntryError("expires must be a date, YYYY-MM-DD, or an instant, YYYY-MM-DDTHH:MMZ") from None


def parse_entry(text: str) -> ApiKey:
    """Parse one entry. Errors name the field at fault, never the entry's content."""
    fields = _fields(text)
    key = ApiKey(
        key_id=fields["id"],
        tenant=fields.get("tenant", DEFAULT_TENANT),
        scopes=frozenset(s for s in fields["scopes"].split("+") if s),
        digest=bytes.fromhex(fields["sha256"]),
        expires=_entry_expiry(fields["expires"]) if "expires" in fields else None,
        limit=parse_limit(fields["limit"]) if "limit" in fields else None,
        nets=tuple(parse_network(net) for net in fields["nets"].split("+")) if "nets" in fields else (),
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

    def verify(self, presented: str, now: dt.datetime | None = None) -> ApiKey:
        """Return the key's entry, or raise a subclass of :class:`InvalidKey`."""
        if not self.is_well_formed(presented):
            raise MalformedKey
        key = self._by_digest.get(digest(presented))
        if key is None:
            raise UnknownKey
        if key.expires is not None and key.expired(now or dt.datetime.now(dt.UTC)):
            raise ExpiredKey
        return key


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
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="mint a key and print it once with its entry")
    new.add_argument("--id", required=True, help="a name for the key, shown in logs")
    new.add_argument("--scope", action="append", required=True, help="repeat for more scopes")
    new.add_argument("--tenant", default=DEFAULT_TENANT, help="whose data the key reaches")
    new.add_argument("--expires", type=_expiry, help="refused from this day or instant (UTC)")
    new.add_argument("--limit", type=_limit, help="its own rate limit, replacing RATELIMIT_DEFAULT")
    new.add_argument("--net", type=_network, action="append", help="a network it may be used from (repeat)")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    roll_ = commands.add_parser("roll", help="mint the successor of an entry; expire the old one in HOURS")
    roll_.add_argument("entry", nargs="?", help="the old entry; read from standard input if absent")
    roll_.add_argument("--overlap", type=_hours, required=True, help="hours both keys work")
    roll_.add_argument("--expires", type=_expiry, help="the successor's expiry (default: none)")
    roll_.add_argument("--json", action="store_true", help="machine-readable output")
    check = commands.add_parser("check", help="validate entries and describe them, no secrets")
    check.add_argument("entries", nargs="*", help="entries; read from standard input if none")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _refuse_past(expires: dt.date | None) -> bool:
    if expires is not None and refused_at(expires, dt.datetime.now(dt.UTC)):
        print("error: --expires is not in the future: the key would be refused at once", file=sys.stderr)
        return True
    return False


def _print_minted(minted: MintedKey) -> None:
    print(f"key (shown once, give it to the client):\n  {minted.secret}")
    print(f"entry (add it to API_KEYS or API_KEYS_FILE):\n  {minted.entry}")


def _new(args: argparse.Namespace, prefix: str) -> int:
    if _refuse_past(args.expires):
        return 2
    try:
        minted = mint(
            prefix,
            key_id=args.id,
            scopes=args.scope,
            tenant=args.tenant,
            expires=args.expires,
            limit=args.limit,
            nets=args.net or (),
        )
    except EntryError as error:
        print(f"error: key {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": minted.secret, "entry": minted.entry, **minted.key.describe()}))
    else:
        _print_minted(minted)
    return 0


def _roll(args: argparse.Namespace, prefix: str) -> int:
    if _refuse_past(args.expires):
        return 2
    entries = split_entries(args.entry if args.entry is not None else sys.stdin.read())
    if len(entries) != 1:
        print("error: give exactly one entry to roll", file=sys.stderr)
        return 2
    if entries[0].startswith(f"{prefix}_"):
        print("error: that is a raw key: roll its entry, not the key", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.UTC)
    try:
        old = parse_entry(entries[0])
        successor, retired = roll(
            prefix, old, overlap=dt.timedelta(hours=args.overlap), now=now, expires=args.expires
        )
    except EntryError as error:
        print(f"error: entry {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"key": successor.secret, "entry": successor.entry, "old_entry": retired.entry()}))
        return 0
    _print_minted(successor)
    assert retired.expires is not None
    print(
        f"old entry (replace the old one with it; its key is refused from "
        f"{format_expiry(retired.expires)}):\n  {retired.entry()}"
    )
    return 0


def _check(args: argparse.Namespace, prefix: str) -> int:
    text = "\n".join(args.entries) if args.entries else sys.stdin.read()
    try:
        ring = KeyRing.from_text(prefix, text)
    except EntryError as error:
        print(f"error: {error}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None, prefix: str = KEY_PREFIX) -> int:
    args = _parser().parse_args(argv)
    commands = {"new": _new, "roll": _roll, "check": _check}
    return commands[args.command](args, prefix)


if __name__ == "__main__":
    sys.exit(main())
