"""Log masking: no API key, credential header or key-like query value reaches a log line,
tracebacks and extra fields included.

The filter sits on the handlers that write (not on loggers, whose filters miss records of
child loggers), and rewrites each record before any formatter sees it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import re
import threading
import traceback
from contextvars import ContextVar
from typing import Any

MASK = "[MASKED]"
# After the prefix, a run this long of the key alphabet is masked: a key, a truncated or
# mistyped one, but not a word such as the package name (``<prefix>_widgets_api``).
MIN_SECRET_LENGTH = 12
KEY_BODY_LENGTH = 49  # random part and checksum: nothing after them belongs to the key.
# Where a long value was wrapped: a line break and the next line's indentation.
BREAK = r"(?:\r?\n[ \t]*)?"
# As they appear in headers, reprs and WSGI environs (HTTP_X_API_KEY).
CREDENTIAL_HEADERS = r"(?:proxy[-_])?authorization|x[-_]api[-_]key|(?:set[-_])?cookie"
# Any query parameter whose name holds one of these words (api_key, access_token, api%5Fkey...).
KEY_PARAMETER_WORDS = r"key|token|secret|password"

# Every alternative of the masking pattern needs one of these characters (the key's "_" or
# "%5F" separator, a header's ":", "=" or ",", a query's "?", "&" or ";"): a string without
# any, such as a generated request id or a plain path, cannot match and skips the regex.
MASK_TRIGGERS = re.compile(r"[_%:=,?&;]")
# Strings seen to hold nothing to mask (a path, a method, a key id) come back on most lines:
# remembered, they skip the regex. Only such strings are kept, never one that held a secret.
CLEAN_CACHE_SIZE = 4096
CLEAN_MAX_LENGTH = 256

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def masking_pattern(key_prefix: str) -> re.Pattern[str]:
    """Keys of this service (also mistyped, truncated, percent-encoded or wrapped over lines,
    even inside the prefix), credential header values, and key-like query parameters."""
    prefix = BREAK.join(re.escape(char) for char in key_prefix)
    # "_" also percent-encoded, as a raw request line carries it.
    separator = BREAK + r"(?:_|%5[Ff])"
    body = r"(?:" + BREAK + r"[0-9A-Za-z])" + "{" + f"{MIN_SECRET_LENGTH},{KEY_BODY_LENGTH}" + "}"
    key = prefix + separator + body
    header = (
        rf"(?P<header>(?i:(?<![0-9A-Za-z])(?:{CREDENTIAL_HEADERS})(?![0-9A-Za-z])"
        r"(?:[\"']\s*[:=,]|\s*[:=])\s*[\"']?))[^\"'\r\n]+"
    )
    name = r"[^=&;?#\s\"']*"
    query = rf"(?P<query>(?i:[?&;]{name}(?:{KEY_PARAMETER_WORDS}){name}=))[^&;#\s\"']*"
    return re.compile(rf"(?P<key>{key})|{header}|{query}")


class MaskSecrets(logging.Filter):
    """Rewrites message, args, exception text, stack and extras; never drops a record and
    never raises: a record it cannot mask is replaced by the marker."""

    def __init__(self, key_prefix: str) -> None:
        super().__init__()
        self.pattern = masking_pattern(key_prefix)
        self.clean: set[str] = set()

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        return (match.group("header") or match.group("query") or "") + MASK

    def mask(self, text: str) -> str:
        if text in self.clean or MASK_TRIGGERS.search(text) is None:
            return text
        masked = self.pattern.sub(self._replace, text)
        if masked == text and len(text) <= CLEAN_MAX_LENGTH:
            if len(self.clean) >= CLEAN_CACHE_SIZE:
                self.clean.clear()  # bounded: a flood of distinct paths only costs the regex again
            self.clean.add(text)
        return masked

    def _mask_value(self, value: Any) -> Any:
        if type(value) is str:  # most extras: tested first
            return self.mask(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self._mask_value(k): self._mask_value(v) for k, v in value.items()}
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
            record.request_id = rid  # a client may send a key as its request id: masked below
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
            attributes[name] = self._mask_value(attributes[name])

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


# What json.dumps(entry, default=str) builds for every call, built once.
ENCODER = json.JSONEncoder(default=str)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose threads do not queue at the stream.

    Writing releases the GIL, and under threads each release costs a switch between them. A
    thread that finds another one writing leaves its line to that thread, which writes all
    that is pending before it carries on: lines keep their order, each is written before the
    writing thread's own request ends, and under load one write carries several lines.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.writing = False
        self.pending_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as Handler.emit: report, never raise into the caller
            self.handleError(record)
            return True
        with self.pending_lock:
            self.pending.append(line)
            if self.writing:
                return True
            self.writing = True
        self._write_pending(record)
        return True

    def _write_pending(self, record: logging.LogRecord) -> None:
        try:
            while True:
                with self.pending_lock:
                    if not self.pending:
                        self.writing = False
                        return
                    text = "".join(self.pending)
                    self.pending.clear()
                with self.lock:  # type: ignore[union-attr]
                    self.stream.write(text)
                    self.stream.flush()
        except Exception:  # noqa: BLE001 - as Handler.emit: report, never raise into the caller
            with self.pending_lock:
                self.writing = False
            self.handleError(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if hasattr(record, "request_id"):
            entry["request_id"] = record.request_id  # set, and masked, by MaskSecrets
        entry.update({k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    """Readable lines for development, extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES)
        return f"{line} {extras}" if extras else line


def logging_config(*, key_prefix: str, json_lines: bool, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the app, werkzeug and gunicorn alike."""
    handler = {
        "class": f"{__name__}.LineHandler",
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
