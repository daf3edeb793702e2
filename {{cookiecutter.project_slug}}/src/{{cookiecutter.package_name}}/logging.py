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
import traceback
from contextvars import ContextVar
from typing import Any

MASK = "[MASKED]"
KEY_BODY_LENGTH = 49
CREDENTIAL_HEADERS = r"authorization|proxy-authorization|x-api-key|cookie|set-cookie"
KEY_PARAMETERS = r"api[_-]?key|access[_-]?token|token|secret|key"

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def masking_pattern(key_prefix: str) -> re.Pattern[str]:
    """Keys of this service (also mistyped, truncated or wrapped over lines), credential
    header values, and key-like query parameters."""
    key = re.escape(key_prefix) + r"_(?:(?:\r?\n[ \t]*)?[0-9A-Za-z]){1," + str(KEY_BODY_LENGTH) + "}"
    header = rf"(?i:\b(?:{CREDENTIAL_HEADERS})\b[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n]+"
    query = rf"(?i:[?&;](?:{KEY_PARAMETERS})=)[^&\s\"'#]*"
    return re.compile(rf"(?P<key>{key})|(?P<header>{header})|(?P<query>{query})")


class MaskSecrets(logging.Filter):
    """Rewrites message, args, exception text, stack and extras; never drops a record."""

    def __init__(self, key_prefix: str) -> None:
        super().__init__()
        self.pattern = masking_pattern(key_prefix)

    def _replace(self, match: re.Match[str]) -> str:
        if match.lastgroup == "key":
            return MASK
        text = match.group(0)
        name_end = re.match(r"[^:=]*[:=]\s*[\"']?", text)
        return (name_end.group(0) if name_end else "") + MASK

    def mask(self, text: str) -> str:
        return self.pattern.sub(self._replace, text)

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self._mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._mask_value(v) for v in value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = f"{record.msg} (unformattable arguments)"
        record.msg = self.mask(message)
        record.args = None
        if record.exc_info:
            # Format the traceback here, masked, and drop exc_info so that no formatter
            # renders the original (exception messages and locals may hold a key).
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        for name, value in vars(record).items():
            if name not in STANDARD_ATTRIBUTES:
                setattr(record, name, self._mask_value(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update((k, v) for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


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
