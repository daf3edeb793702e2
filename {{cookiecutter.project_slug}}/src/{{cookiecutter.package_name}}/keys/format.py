"""The key format, so a key cannot be guessed, a mistyped one is dropped before any lookup, and a
leaked one is recognised: by secret scanners, and by this service wherever a name is expected.

A key is ``<prefix>_<43 base62 characters><6 base62 characters>``: 256 bits from :mod:`secrets`,
then a CRC32 checksum of everything before it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

KEY_PREFIX = "{{ cookiecutter.key_prefix }}"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 43  # 62**43 > 2**256: every 256-bit value fits.
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: every CRC32 value fits.
RANDOM_BYTES = 32
# Where text is shown (log lines, the command line's errors), this many key characters after the
# prefix are masked as a piece of a key. Masking a lookalike costs nothing; refusing one would
# refuse ordinary names, so names are refused only when they hold a whole key (holds_a_key).
MIN_KEY_PIECE = 12
# At each place where they start, the key characters that could be a body and its checksum.
KEY_WINDOW = re.compile("(?=([0-9A-Za-z]{" + str(BODY_LENGTH + CHECKSUM_LENGTH) + "}))")


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


def new_secret(prefix: str) -> str:
    """A new key: every one of its 256 random bits encoded, then the checksum."""
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_LENGTH)
    return f"{prefix}_{body}{checksum(f'{prefix}_{body}')}"


def key_pattern(prefix: str, shortest: int = BODY_LENGTH + CHECKSUM_LENGTH) -> str:
    """A regular expression for this service's keys (or, with ``shortest``, any piece of one at
    least that long after the prefix), for secret scanners and masking."""
    return re.escape(prefix) + "_[0-9A-Za-z]{" + f"{shortest},{BODY_LENGTH + CHECKSUM_LENGTH}" + "}"


def holds_a_key(text: str, prefix: str) -> bool:
    """True when ``text`` holds a key of this service anywhere: a body followed by its checksum,
    with its prefix or without, glued to other text or not.

    A name that only starts like a key (``acme_integrations``) holds none: 43 characters followed
    by the six of their checksum come about by chance once in 62**6 (about 5.7e10) tries.
    """
    for window in KEY_WINDOW.finditer(text):
        body, check = window[1][:BODY_LENGTH], window[1][BODY_LENGTH:]
        if checksum(f"{prefix}_{body}") == check:
            return True
    return False
