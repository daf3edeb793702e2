"""Request bodies read so that no body can end in a 500 or hold a connection: malformed or
deeply nested JSON, text that is not Unicode, a chunked body over the size limit, or a body
that trickles in."""

from __future__ import annotations

import json
from typing import Any

import gevent
from flask import current_app, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from .errors import fail

# Seconds a client has to send its whole body once the request has started. The worker reads
# the request line and headers under a deadline of its own (gunicorn.conf.py, keepalive).
BODY_TIMEOUT = 10
MALFORMED = "The request body is malformed."


class SlowBody(Exception):
    """The body did not arrive within BODY_TIMEOUT."""


def _is_unicode(value: Any) -> bool:
    """False when a string anywhere in ``value`` holds a lone surrogate ("\\ud800" in JSON):
    valid JSON, but not text that any database or encoder will accept."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def json_body() -> Any:
    """The request's JSON document, or a 4xx problem: 415, 413, 408 or 400."""
    if not request.is_json:
        fail(415)
    try:
        with gevent.Timeout(BODY_TIMEOUT, SlowBody):
            data = request.get_data()
    except SlowBody:
        fail(408, headers={"Connection": "close"})
    except ClientDisconnected:  # fewer bytes than Content-Length said
        fail(400, MALFORMED)
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - see below
        # A body that breaks HTTP framing (a bad chunk): the server's body reader raises classes
        # of its own, which no server documents. The client's fault whatever the class, never a
        # 500.
        fail(400, MALFORMED)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and len(data) >= limit:
        # A chunked body stops being read at the limit: reaching it means it was larger.
        fail(413)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        fail(400, "The request body is not valid JSON.")
    if not _is_unicode(document):
        fail(400, "The request body holds text that is not valid Unicode.")
    return document
