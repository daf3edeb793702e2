"""The one verifier, so a presented key is accepted only by the whole digest of a configured
entry, in a time that tells nothing about any configured key.

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
least 112 bits), and a slow hash would make every request slow. The whole digest is the
lookup key: entries are not secrets, and a lookup on part of it would let whoever reads one
find a matching key offline.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator

from .entries import ApiKey, EntryError, parse_entry, split_entries
from .format import BODY_LENGTH, CHECKSUM_LENGTH, checksum, digest, key_pattern


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
