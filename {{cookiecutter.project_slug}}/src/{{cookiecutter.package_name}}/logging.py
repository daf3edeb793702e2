"""Log masking and log lines that cannot lie: no API key, credential header or key-like query
value reaches a log line (tracebacks and extra fields included), and no client-sent control
character can start a forged line.

The filter sits on the handlers that write (not on loggers, whose filters miss records of
child loggers), and rewrites each record before any formatter sees it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import logging.config
import re
import traceback
from contextvars import ContextVar
from typing import Any

from .keys import BODY_LENGTH, CHECKSUM_LENGTH, MIN_KEY_PIECE

MASK = "[MASKED]"
# What may split a key in a log line and still leave it readable: a wrapped line, whitespace,
# a slash, a "+" (a form-encoded space), any percent-encoded byte, or an escape in a repr().
SPLIT = r"(?:\r?\n[ \t]*|[ \t/+]|%[0-9A-Fa-f]{2}|\\[tnr]|\\x[0-9A-Fa-f]{2})?"
# A character of the key alphabet, raw or percent-encoded as a raw request line carries it.
KEY_CHARACTER = r"(?:[0-9A-Za-z]|%(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]))"
# As they appear in headers, reprs and WSGI environs (HTTP_X_API_KEY).
CREDENTIAL_HEADERS = r"(?:proxy[-_])?authorization|x[-_]api[-_]key|(?:set[-_])?cookie"
CREDENTIAL_NAME = re.compile(rf"(?i:(?<![0-9A-Za-z])(?:{CREDENTIAL_HEADERS})(?![0-9A-Za-z]))")
AUTH_SCHEMES = r"bearer|basic|token|apikey|digest|negotiate"
# Any query parameter whose name holds one of these words (api_key, access_token, api%5Fkey...).
KEY_PARAMETER_WORDS = r"key|token|secret|password"
# The rest of a key that something split from its prefix (gunicorn quotes the part of a request
# line after a space on its own): a run of the key alphabet with a digit, a capital and a
# small letter. Hex ids, words and identifiers lack one of the three; a key's body has all.
KEY_PIECE = (
    r"(?<![0-9A-Za-z])(?=[0-9A-Za-z]*[0-9])(?=[0-9A-Za-z]*[A-Z])(?=[0-9A-Za-z]*[a-z])"
    + "[0-9A-Za-z]{"
    + str(MIN_KEY_PIECE)
    + ",}(?![0-9A-Za-z])"
)
# Long enough to hold "x:" and a key piece once decoded: credentials a client base64-encoded.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
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
# Control characters, and the Unicode line breaks that some viewers honour.
CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class Minted(str):
    """Text the service made itself from nothing a client sent (its request ids). The filter
    passes it as it is; any other text, a plain ``str`` included, is masked."""


# Values that cannot hold a client's text: the filter leaves them as they are without a look.
PASSED_AS_IS = frozenset({type(None), bool, int, float, Minted})

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def masking_pattern(key_prefix: str) -> re.Pattern[str]:
    """Keys of this service (also mistyped, truncated, percent-encoded, or split by a line
    break, a space or a slash, even inside the prefix), credential header values, and
    key-like query parameters."""
    prefix = SPLIT.join(re.escape(char) for char in key_prefix)
    separator = SPLIT + r"(?:_|%5[Ff])"
    body = rf"(?:{SPLIT}{KEY_CHARACTER})" + "{" + f"{MIN_KEY_PIECE},{BODY_LENGTH + CHECKSUM_LENGTH}" + "}"
    key = prefix + separator + body
    header = (
        rf"(?P<header>(?i:(?<![0-9A-Za-z])(?:{CREDENTIAL_HEADERS})(?![0-9A-Za-z])"
        rf"(?:[\"']\s*[:=,]|\s*[:=]|\s+(?=(?:{AUTH_SCHEMES})\s))\s*[\"']?))[^\"'\r\n]+"
    )
    name = r"[^=&;?#\s\"']*"
    query = rf"(?P<query>(?i:[?&;]{name}(?:{KEY_PARAMETER_WORDS}){name}=))[^&;#\s\"']*"
    return re.compile(rf"(?P<key>{key})|{header}|{query}|{KEY_PIECE}")


def escape_controls(text: str) -> str:
    """Control characters as visible escapes: a client's CR LF cannot start a line of its own."""
    return CONTROL.sub(lambda match: json.dumps(match.group())[1:-1], text)


class MaskSecrets(logging.Filter):
    """Rewrites message, args, exception text, stack and extras; never drops a record and
    never raises: a record it cannot mask is replaced by the marker."""

    def __init__(self, key_prefix: str) -> None:
        super().__init__()
        self.pattern = masking_pattern(key_prefix)
        self.encoded_prefix = f"{key_prefix}_".encode()
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
        if (len(text) < MIN_KEY_PIECE and MASK_TRIGGERS.search(text) is None) or text in self.clean:
            return text
        masked = self.pattern.sub(self._replace, BASE64_RUN.sub(self._encoded_key, text))
        if masked == text and len(text) <= CLEAN_LONGEST:
            if len(self.clean) >= CLEAN_REMEMBERED:
                self.clean.clear()
            self.clean.add(text)
        return masked

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            # A credential header's value is masked whole, whatever its shape: in a message the
            # header's name precedes it and the header rule applies; in a dict they are apart.
            return {
                self._mask_value(k): MASK
                if isinstance(k, str) and CREDENTIAL_NAME.search(k)
                else self._mask_value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._mask_value(v) for v in value]
        # Any other object is written as its str() (headers, bytes, exceptions, sets).
        text = str(value)
        masked = self.mask(text)
        return value if masked == text else masked

    def _mask_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = f"{record.msg} (unformattable arguments)"
        record.msg = self.mask(message)
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
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
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


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines; JSON escapes every control character."""

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
        return ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    """Readable lines for development, extras appended as key=value.

    Client text is escaped, and every line of a record after its first (a traceback, a
    stack) is indented, so nothing a client sends can pass for a record of its own.
    """

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"{self.formatTime(record, self.datefmt)} {record.levelname} {record.name}: {record.getMessage()}"
        )
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        lines = [escape_controls(f"{head} {extras}" if extras else head)]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                lines += (f"    | {escape_controls(line)}" for line in block.split("\n"))
        return "\n".join(lines)


def logging_config(*, key_prefix: str, json_lines: bool, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app, werkzeug and gunicorn alike."""
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "lines",
        "filters": ["mask"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"mask": {"()": MaskSecrets, "key_prefix": key_prefix}},
        "formatters": {"lines": {"()": JsonFormatter if json_lines else TextFormatter}},
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


def configure(*, key_prefix: str, json_lines: bool, level: str) -> None:
    if not is_configured():
        logging.config.dictConfig(logging_config(key_prefix=key_prefix, json_lines=json_lines, level=level))
