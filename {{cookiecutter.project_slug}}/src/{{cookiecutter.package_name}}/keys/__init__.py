"""API keys: the format, the entries, the one verifier and rolling, so no key is stored or
compared raw. The standard library only: no web framework is needed to mint or check a key.

- ``format``: what a key looks like (prefix, 256 random bits, checksum) and its digest;
- ``entries``: what the service holds instead of a key, and how it is parsed and validated;
- ``ring``: :class:`KeyRing`, which verifies a presented key;
- ``roll``: successors, and rewriting a keys file in place;
- ``cli``: ``python -m <package>.keys new | roll | check``.
"""

from .entries import (
    DEFAULT_TENANT,
    ID_PATTERN,
    TENANT_PATTERN,
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
    refused_at,
    refused_from,
    split_entries,
)
from .format import (
    ALPHABET,
    BODY_LENGTH,
    CHECKSUM_LENGTH,
    KEY_PREFIX,
    MIN_KEY_PIECE,
    RANDOM_BYTES,
    checksum,
    digest,
    holds_a_key,
    key_pattern,
)
from .ring import ExpiredKey, InvalidKey, KeyRing, MalformedKey, UnknownKey
from .roll import MAX_OVERLAP_HOURS, roll, successor_id

__all__ = [
    "ALPHABET",
    "BODY_LENGTH",
    "CHECKSUM_LENGTH",
    "DEFAULT_TENANT",
    "ID_PATTERN",
    "KEY_PREFIX",
    "MAX_OVERLAP_HOURS",
    "MIN_KEY_PIECE",
    "RANDOM_BYTES",
    "TENANT_PATTERN",
    "ApiKey",
    "EntryError",
    "ExpiredKey",
    "InvalidKey",
    "KeyRing",
    "MalformedKey",
    "MintedKey",
    "Network",
    "UnknownKey",
    "checksum",
    "digest",
    "expiry_within",
    "format_expiry",
    "holds_a_key",
    "key_pattern",
    "mint",
    "parse_entry",
    "parse_expiry",
    "parse_limit",
    "parse_network",
    "refused_at",
    "refused_from",
    "roll",
    "split_entries",
    "successor_id",
]
