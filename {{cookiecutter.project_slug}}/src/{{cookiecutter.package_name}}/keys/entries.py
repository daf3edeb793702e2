"""Entries: what the service knows about a key instead of the key, so that a leaked configuration
grants nothing, and a malformed one is refused without quoting it.

An entry is one line of fields::

    id=ci-deploy;tenant=acme;scopes=items:read+items:write;expires=2027-01-01;sha256=<hex>

Optional fields narrow what a stolen key can do: ``expires`` (a date, refused from that day, or
an instant such as ``2027-01-01T12:00Z``; UTC either way), ``limit`` (the key's own rate limit,
windows joined by ``+``: ``10/second+1000/hour``) and ``nets`` (the networks it may be used
from: ``10.0.0.0/8+2001:db8::/32``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .format import KEY_PREFIX, digest, holds_a_key, new_secret

# A name (a tenant, or the stem of an id): what operators type and logs show.
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
TENANT_PATTERN = re.compile(NAME)
# An id is a name, and for a successor (keys roll) "~" and its generation: ci-deploy, ci-deploy~2,
# ci-deploy~3. No name holds "~", so a successor's id never collides with a name (release.2024
# is a name, not a generation), and it fits whatever the stem's length. One spelling per
# generation: the first has no suffix, and no generation starts with 0.
ID_PATTERN = re.compile(f"(?P<stem>{NAME})" + r"(?:~(?P<generation>[2-9]|[1-9][0-9]{1,5}))?")
LAST_GENERATION = 999_999
SCOPE_PATTERN = re.compile(r"[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
PLACEHOLDER_DIGEST = "0" * 64
DEFAULT_TENANT = "default"
FIELDS = frozenset({"id", "tenant", "scopes", "expires", "limit", "nets", "sha256"})
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
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    def accepted_after(self, latest: dt.datetime) -> bool:
        """True when the key is still accepted after ``latest``: it never expires, or later."""
        return self.expires is None or refused_from(self.expires) > latest

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


def expiry_within(asked: dt.date | None, *, now: dt.datetime, max_days: int | None) -> dt.date | None:
    """The expiry of a key minted at ``now``: the one asked for, else, under a maximum lifetime
    of ``max_days``, the latest it allows (rounded down to the minute entries are written in).

    Refuses an expiry that is not in the future, or that the service would refuse to start with.
    """
    if asked is not None and refused_at(asked, now):
        raise EntryError("is not in the future: the key would be refused at once")
    if max_days is None:
        return asked
    latest = now + dt.timedelta(days=max_days)
    if asked is None:
        return latest.astimezone(dt.UTC).replace(second=0, microsecond=0)
    if refused_from(asked) > latest:
        raise EntryError(f"is more than {max_days} days ahead, the maximum lifetime (KEY_MAX_LIFETIME_DAYS)")
    return asked


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
    secret = new_secret(prefix)
    own_limit = parse_limit(limit) if limit is not None else None
    key = ApiKey(key_id, tenant, frozenset(scopes), digest(secret), expires, own_limit, tuple(nets))
    _validate(key)
    return MintedKey(secret, key)


def _validate(key: ApiKey) -> None:
    if not ID_PATTERN.fullmatch(key.key_id):
        raise EntryError(
            "id must be 1-64 letters, digits, '.', '_' or '-' (a successor adds '~' and a generation)"
        )
    if not TENANT_PATTERN.fullmatch(key.tenant):
        raise EntryError("tenant must be 1-64 letters, digits, '.', '_' or '-'")
    for name, value in (("id", key.key_id), ("tenant", key.tenant)):
        # Ids and tenants are logged and shown everywhere: a key pasted as one must not be.
        if holds_a_key(value, KEY_PREFIX):
            raise EntryError(f"{name} holds an API key: name the key, do not paste it")
    if not key.scopes:
        raise EntryError("needs at least one scope")
    for scope in key.scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise EntryError("scopes must look like 'items:read'")


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
    lines = (line.partition("#")[0] for line in text.splitlines())
    return [part.strip() for line in lines for part in line.split(",") if part.strip()]
