"""Log masking and log lines that cannot lie or flood: no API key, credential header or key-like
query value reaches a log line (tracebacks and extra fields included), no client-sent control
character can start a forged line, and no client text can make masking slow or a line long.

The filter sits on the handlers that write (not on loggers, whose filters miss records of
child loggers), and rewrites each record before any formatter sees it: every string is cut to
the line's length first, then masked by patterns that never backtrack more than a few
characters, so masking costs time in proportion to that bounded length. The formatters then
fit each record into one line of at most ``LINE_LIMIT`` bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import json
import logging
import logging.config
import re
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .keys import BODY_LENGTH, CHECKSUM_LENGTH, MIN_KEY_PIECE, holds_a_key
from .logwriter import CAPACITY, BackgroundHandler

MASK = "[MASKED]"
# The longest line a record becomes, in bytes (LOG_LINE_LIMIT): client text is cut to fit.
LINE_LIMIT = 1024
# A traceback or stack is the one part of a record allowed beyond the line: in a text log each
# of its lines is a line of its own, in a JSON line it adds at most this many bytes. Its first
# lines (a quarter of this) and its last ones (the innermost frames and the exception) are kept.
TRACEBACK_LIMIT = 8192
# A list or a dict longer than this is cut (a dict silently): no line could show more of its items.
MAX_ITEMS = 100
# A key character, percent-encoded as a raw request line carries it.
ENCODED_KEY_CHARACTER = r"%(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa])"
KEY_CHARACTER = rf"(?:[0-9A-Za-z]|{ENCODED_KEY_CHARACTER})"
# What may split a key in a log line and still leave it readable: a wrapped line, whitespace,
# a slash, a "+" (a form-encoded space), a percent-encoded byte that is not a key character,
# or an escape in a repr(). No split starts as a key character does, and no split starts as
# another does, so matching a key never has two ways to go on: it cannot backtrack. The
# lookahead lets the usual case, no split at all, cost one test instead of five.
SPLIT = (
    r"(?:(?=[\r\n \t/+%\\])(?:\r?\n[ \t]*+|[ \t/+]|%(?!" + ENCODED_KEY_CHARACTER[1:] + r")[0-9A-Fa-f]{2}"
    r"|\\[tnr]|\\x[0-9A-Fa-f]{2}))?"
)
# As they appear in headers, reprs and WSGI environs (HTTP_X_API_KEY).
CREDENTIAL_HEADERS = r"(?:proxy[-_])?authorization|x[-_]api[-_]key|(?:set[-_])?cookie"
CREDENTIAL_NAME = re.compile(rf"(?i:(?<![0-9A-Za-z])(?:{CREDENTIAL_HEADERS})(?![0-9A-Za-z]))")
AUTH_SCHEMES = r"bearer|basic|token|apikey|digest|negotiate"
# Any query parameter whose name holds one of these words (api_key, access_token, api%5Fkey...).
KEY_PARAMETER_WORDS = r"key|token|secret|password"
# A character of a query parameter's name; the letters a key word starts with; and a name
# character that starts none, which is most of them, told in one test.
NAME_CHARACTER = r"[^=&;?#\s\"']"
WORD_STARTS = "".join(sorted({word[0] for word in KEY_PARAMETER_WORDS.split("|")}))
NOT_A_WORD_START = rf"[^=&;?#\s\"'{WORD_STARTS}]"
# The rest of a key that something split from its prefix (gunicorn quotes the part of a request
# line after a space on its own): a run of the key alphabet with a digit, a capital and a
# small letter. Hex ids, words and identifiers lack one of the three; a key's body has all.
# It starts only where a run starts, each lookahead stops at the first character it looks for,
# and the run is taken whole (possessive): a long run is read a few times, never once per start.
KEY_PIECE = (
    r"(?<![0-9A-Za-z])(?=[A-Za-z]*+[0-9])(?=[0-9a-z]*+[A-Z])(?=[0-9A-Z]*+[a-z])"
    + "[0-9A-Za-z]{"
    + str(MIN_KEY_PIECE)
    + ",}+"
)
# Long enough to hold "x:" and a key piece once decoded: credentials a client base64-encoded.
# Only where a run starts, taken whole: a run too short is not tried again from each character.
BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{24,}+={0,2}")
# Read in either alphabet: a urlsafe run may hold "_" and no "-", and b64decode's altchars
# will stop accepting "+" and "/" (CPython gh-125346).
URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")

# Every alternative of the masking pattern needs one of these characters (the key's "_" or
# "%5F" separator, a header's ":", "=" or ",", a query's "?", "&" or ";", a scheme's space)
# or a run as long as a key piece: a short string without any, such as a method or a status,
# skips the regex.
MASK_TRIGGERS = re.compile(r"[_%:=,?&; ]")
# Most strings repeat (messages, routes, addresses): each is scanned once, then found in a set.
# Only text that needed no masking is remembered, so no secret is kept; the set is emptied
# when full, so a client sending ever new paths costs memory up to this bound only.
CLEAN_REMEMBERED = 4096
CLEAN_LONGEST = 200
# Control characters, and the Unicode line breaks that some viewers honour, as JSON escapes.
CONTROLS = [*range(0x20), 0x7F, 0x85, 0x2028, 0x2029]
ESCAPES = str.maketrans({code: json.dumps(chr(code))[1:-1] for code in CONTROLS})


class Minted(str):
    """Text the service made itself from nothing a client sent (its request ids). The filter
    passes it as it is; any other text, a plain ``str`` included, is masked."""


class Name(str):
    """A key id or tenant from the key ring, given as an extra field. The ring refuses a name
    that holds a whole key (``holds_a_key``) and accepts one that only starts like a key
    (``acme_integrations``): the filter draws the same line, so such a name identifies its
    caller in every line instead of showing as the marker. Inside a message it is masked as
    any text is: pass names as extra fields."""


# Values that cannot hold a client's text: the filter leaves them as they are without a look.
PASSED_AS_IS = frozenset({type(None), bool, int, float, Minted})

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

Size = Callable[[str], int]


def masking_pattern(key_prefix: str) -> re.Pattern[str]:
    """Keys of this service (also mistyped, truncated, percent-encoded, or split by a line
    break, a space or a slash, even inside the prefix), credential header values, and
    key-like query parameters. Each alternative has one way to match from a given start (see
    SPLIT, KEY_PIECE), so a failed attempt costs a few characters, never the rest of the text."""
    prefix = SPLIT.join(re.escape(char) for char in key_prefix)
    separator = SPLIT + r"(?:_|%5[Ff])"
    body = rf"(?:{SPLIT}{KEY_CHARACTER})" + "{" + f"{MIN_KEY_PIECE},{BODY_LENGTH + CHECKSUM_LENGTH}" + "}"
    key = prefix + separator + body
    header = (
        rf"(?P<header>(?i:(?<![0-9A-Za-z])(?:{CREDENTIAL_HEADERS})(?![0-9A-Za-z])"
        rf"(?:[\"']\s*+[:=,]|\s*+[:=]|\s++(?=(?:{AUTH_SCHEMES})\s))\s*+[\"']?))[^\"'\r\n]+"
    )
    # The name up to the first key word, the word, the rest of the name, then "=": each part
    # taken whole, so a name that holds the words many times and no "=" is read once.
    words = KEY_PARAMETER_WORDS
    name = rf"(?:{NOT_A_WORD_START}|(?!{words})[{WORD_STARTS}])*+(?:{words}){NAME_CHARACTER}*+="
    query = rf"(?P<query>(?i:[?&;]{name}))[^&;#\s\"']*+"
    return re.compile(rf"(?P<key>{key})|{header}|{query}|{KEY_PIECE}")


def escape_controls(text: str) -> str:
    """Control characters as visible escapes: a client's CR LF cannot start a line of its own."""
    return text.translate(ESCAPES)


def cut_marker(count: int, unit: str = "characters") -> str:
    """What replaces the end of a text that was too long: how much is missing."""
    return f"[CUT {count} {unit}]"


def cut_to(text: str, room: int, size: Size = len) -> str:
    """The longest start of ``text`` that, followed by the cut marker, has ``size`` at most
    ``room`` (the marker alone when nothing fits)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if size(text[:middle] + cut_marker(len(text) - middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + cut_marker(len(text) - low)


def cut_lines(text: str, room: int, line_room: int, size: Size = len) -> str:
    """A traceback within ``room``: each line within ``line_room``, then as many first lines as
    a quarter of the room holds and as many last lines as the rest holds, a marker between.
    ``size`` must add up: the size of a text is the sum of the sizes of its pieces."""
    lines = [line if size(line) <= line_room else cut_to(line, line_room, size) for line in text.split("\n")]
    kept = "\n".join(lines)
    if size(kept) <= room:
        return kept
    # Each kept line brings its line break; the marker sits between, with the count it can have.
    costs = [size(line + "\n") for line in lines]
    budget = room - size(cut_marker(len(lines), "lines"))
    # Neither loop runs out of lines: all of them together do not fit (the text did not).
    head = used = 0
    while used + costs[head] <= budget // 4:
        used += costs[head]
        head += 1
    tail = len(lines)
    while used + costs[tail - 1] <= budget:
        tail -= 1
        used += costs[tail]
    return "\n".join([*lines[:head], cut_marker(tail - head, "lines"), *lines[tail:]])


def fit(parts: dict[str, str], room: int, size: Size) -> None:
    """Cut ``parts`` (one or more, in place) so that their sizes add up to at most ``room``:
    every part longer than a common cap is cut to it, the largest cap that fits. One long value
    (a client's path) gives way and the short ones around it stay whole; several long ones keep
    a start each. A part is never replaced by a marker longer than itself."""
    sizes = {name: size(text) for name, text in parts.items()}
    low, high = 0, max(sizes.values())
    while low < high:
        cap = (low + high + 1) // 2
        if sum(min(part, cap) for part in sizes.values()) <= room:
            low = cap
        else:
            high = cap - 1
    for name, text in parts.items():
        if sizes[name] > low:
            parts[name] = min(text, cut_to(text, low, size), key=size)


class MaskSecrets(logging.Filter):
    """Cuts and then rewrites message, args, exception text, stack and extras; never drops a
    record and never raises: a record it cannot mask is replaced by the marker."""

    def __init__(self, key_prefix: str, limit: int = LINE_LIMIT) -> None:
        super().__init__()
        self.key_prefix = key_prefix
        self.pattern = masking_pattern(key_prefix)
        self.encoded_prefix = f"{key_prefix}_".encode()
        self.limit = limit
        self.clean: set[str] = set()

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        return (match.group("header") or match.group("query") or "") + MASK

    def _encoded_key(self, match: re.Match[str]) -> str:
        run = match.group()
        try:
            decoded = base64.b64decode(run.translate(URLSAFE_TO_STANDARD) + "=" * (-len(run) % 4))
        except (binascii.Error, ValueError):
            return run
        return MASK if self.encoded_prefix in decoded else run

    def mask(self, text: str) -> str:
        """The text with every secret replaced by the marker, in time linear in its length."""
        if (len(text) < MIN_KEY_PIECE and MASK_TRIGGERS.search(text) is None) or text in self.clean:
            return text
        masked = self.pattern.sub(self._replace, BASE64_RUN.sub(self._encoded_key, text))
        if masked == text and len(text) <= CLEAN_LONGEST:
            if len(self.clean) >= CLEAN_REMEMBERED:
                self.clean.clear()
            self.clean.add(text)
        return masked

    def cut_and_mask(self, text: str) -> str:
        """Client text cut to the line's length, then masked: a string of any length costs the
        masking of one line at most."""
        if len(text) <= self.limit:
            return self.mask(text)
        return self.mask(text[: self.limit]) + cut_marker(len(text) - self.limit)

    def _mask_block(self, text: str) -> str:
        return self.mask(cut_lines(text, TRACEBACK_LIMIT, self.limit))

    def _mask_value(self, value: Any) -> Any:
        if type(value) is Name:
            # A name is configuration, not client text: short, and masked only as the ring
            # refuses a name, when it holds a whole key.
            return MASK if len(value) > self.limit or holds_a_key(value, self.key_prefix) else value
        if isinstance(value, str):
            return self.cut_and_mask(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            # A credential header's value is masked whole, whatever its shape: in a message the
            # header's name precedes it and the header rule applies; in a dict they are apart.
            return {
                self._mask_value(k): MASK
                if isinstance(k, str) and CREDENTIAL_NAME.search(k)
                else self._mask_value(v)
                for k, v in itertools.islice(value.items(), MAX_ITEMS)
            }
        if isinstance(value, list | tuple):
            kept = [self._mask_value(v) for v in value[:MAX_ITEMS]]
            return [*kept, cut_marker(len(value) - MAX_ITEMS, "items")] if len(value) > MAX_ITEMS else kept
        # Any other object is written as its str() (headers, bytes, exceptions, sets).
        text = str(value)
        masked = self.cut_and_mask(text)
        return value if masked == text else masked

    def _mask_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = f"{record.msg} (unformattable arguments)"
        record.msg = self.cut_and_mask(message)
        record.args = None
        rid = request_id.get()
        if rid is not None and "request_id" not in vars(record):
            record.request_id = rid
        if record.exc_info:
            # Format the traceback here, masked, and drop exc_info so that no formatter
            # renders the original (exception messages and locals may hold a key).
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._mask_block(record.exc_text)
        if record.stack_info:
            record.stack_info = self._mask_block(record.stack_info)
        attributes = vars(record)
        for name in attributes.keys() - STANDARD_ATTRIBUTES:  # the extras, found in one set operation
            value = attributes[name]
            if type(value) not in PASSED_AS_IS:
                attributes[name] = self._mask_value(value)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._mask_record(record)
        except Exception:  # noqa: BLE001 - logging must not fail, nor leak what it could not mask
            record.msg = f"{MASK} (a log record that could not be masked)"
            record.args = record.exc_info = record.exc_text = record.stack_info = None
            for name in list(vars(record)):
                if name not in STANDARD_ATTRIBUTES:
                    setattr(record, name, MASK)
        return True


# Built once: json.dumps(..., default=str) would build an encoder for every line.
ENCODER = json.JSONEncoder(default=str)
# In a JSON line: what identifies the record, never cut, and where tracebacks go.
FIXED_FIELDS = ("time", "level", "logger")
TRACEBACK_FIELDS = ("exception", "stack")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES}


def _as_text(value: Any) -> str:
    """A field's value as the text that may be cut: lists and dicts as their JSON."""
    if isinstance(value, str):
        return value
    return ENCODER.encode(value) if isinstance(value, dict | list) else str(value)


def json_size(text: str) -> int:
    """Bytes of ``text`` inside a JSON string (ASCII only: characters and bytes are one)."""
    return len(ENCODER.encode(text)) - 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines; JSON escapes every control character.
    A line is at most ``limit`` bytes, plus ``TRACEBACK_LIMIT`` for a traceback or stack."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = ENCODER.encode(entry)
        return line if len(line) <= self.limit else self._fitted(entry)

    def _fitted(self, entry: dict[str, Any]) -> str:
        for name in TRACEBACK_FIELDS:
            if name in entry:
                entry[name] = cut_lines(entry[name], TRACEBACK_LIMIT, self.limit, json_size)
        # Text, and lists or dicts as their JSON text, is what may be cut; tracebacks have their own room.
        parts = {
            name: _as_text(value)
            for name, value in entry.items()
            if name not in (*FIXED_FIELDS, *TRACEBACK_FIELDS) and type(value) not in PASSED_AS_IS
        }
        beyond = sum(json_size(entry[name]) for name in TRACEBACK_FIELDS if name in entry)
        overhead = len(ENCODER.encode({**entry, **parts})) - beyond - sum(map(json_size, parts.values()))
        whole = dict(parts)
        fit(parts, self.limit - overhead, json_size)
        # A list or a dict that did not need cutting stays one.
        line = ENCODER.encode(
            {**entry, **{name: text for name, text in parts.items() if text != whole[name]}}
        )
        if len(line) - beyond <= self.limit or "fields_cut" in entry:
            return line
        # More fields than a line holds (a record of the service's own making): keep the message.
        kept = {name: entry[name] for name in (*FIXED_FIELDS, *TRACEBACK_FIELDS) if name in entry}
        return self._fitted({**kept, "message": entry["message"], "fields_cut": len(entry) - len(kept) - 1})


def text_size(text: str) -> int:
    """Bytes of ``text`` in a text line: control characters escaped, encoded as UTF-8."""
    return len(escape_controls(text).encode("utf-8", "backslashreplace"))


class TextFormatter(logging.Formatter):
    """Readable lines for development, extras appended as key=value.

    Client text is escaped, and every line of a record after its first (a traceback, a
    stack) is indented, so nothing a client sends can pass for a record of its own. Every
    line is at most ``limit`` bytes.
    """

    INDENT = "    | "

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record, self.datefmt)} {record.levelname} {record.name}: "
        parts = {"": record.getMessage(), **{name: str(value) for name, value in _extras(record).items()}}
        line = self._line(head, parts)
        if text_size(line) > self.limit:
            fit(parts, self.limit - text_size(line) + sum(map(text_size, parts.values())), text_size)
            line = self._line(head, parts)
        lines = [cut_to(line, self.limit, text_size) if text_size(line) > self.limit else line]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        room = self.limit - len(self.INDENT)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                kept = cut_lines(block, TRACEBACK_LIMIT, room, text_size)
                lines += (f"{self.INDENT}{escape_controls(line)}" for line in kept.split("\n"))
        return "\n".join(lines)

    @staticmethod
    def _line(head: str, parts: dict[str, str]) -> str:
        message, *extras = (f"{name}={text}" if name else text for name, text in parts.items())
        return escape_controls(" ".join([head + message, *extras]))


def logging_config(
    *, key_prefix: str, json_lines: bool, level: str, line_limit: int = LINE_LIMIT, background: bool = False
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app, werkzeug and gunicorn alike.

    ``background`` (gunicorn): in each process forked after this configuration (the workers),
    lines are written by a thread of the operating system from a bounded queue (logwriter.py),
    so a stalled log reader never stalls the event loop; a full queue drops lines and counts
    them. Otherwise, and in the process that applies it (the master), each record is written
    before the call returns.
    """
    writer: dict[str, Any] = (
        {"()": BackgroundHandler, "capacity": CAPACITY, "only_in_children": True}
        if background
        else {"class": "logging.StreamHandler"}
    )
    handler = {**writer, "stream": "ext://sys.stderr", "formatter": "lines", "filters": ["mask"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"mask": {"()": MaskSecrets, "key_prefix": key_prefix, "limit": line_limit}},
        "formatters": {"lines": {"()": JsonFormatter if json_lines else TextFormatter, "limit": line_limit}},
        "handlers": {"stderr": handler, "stdout": {**handler, "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's loggers do not propagate to the root: give them the same handler.
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }


def is_configured() -> bool:
    """True when the root logger already writes through the masking filter (under gunicorn)."""
    return any(
        isinstance(f, MaskSecrets) for handler in logging.getLogger().handlers for f in handler.filters
    )


def configure(*, key_prefix: str, json_lines: bool, level: str, line_limit: int = LINE_LIMIT) -> None:
    """Masked logging for the app outside gunicorn (tests, ``flask run``): each record is written
    before the call returns, so a test reads what it logged at once."""
    if not is_configured():
        config = logging_config(
            key_prefix=key_prefix, json_lines=json_lines, level=level, line_limit=line_limit
        )
        logging.config.dictConfig(config)
