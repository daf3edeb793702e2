"""One log line per request, with a request id and the key id, and never the query string or
a header: those are where keys travel."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import secrets
import time

from flask import Flask, Response, g, request

from .keys import KEY_PREFIX
from .logging import request_id

logger = logging.getLogger(__name__)

_ID_KEY = secrets.token_bytes(32)
_COUNTER = itertools.count()

# A client's request id is echoed and logged: accept only short, plain tokens.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def _acceptable(incoming: str) -> bool:
    # A key sent as a request id would be echoed back and logged (masked, so useless).
    return REQUEST_ID.fullmatch(incoming) is not None and f"{KEY_PREFIX}_" not in incoming


def new_request_id() -> str:
    """32 hex digits that no one can predict or count, as uuid4().hex gives.

    A keyed hash of a per-process counter: os.urandom (behind uuid4 and secrets) is a system
    call that releases the GIL, and under threads each release costs a switch between them.
    """
    number = next(_COUNTER).to_bytes(8, "big") + os.getpid().to_bytes(8, "big")
    return hashlib.blake2b(number, key=_ID_KEY, digest_size=16).hexdigest()


def _start() -> None:
    incoming = request.environ.get("HTTP_X_REQUEST_ID")
    rid = incoming if incoming is not None and _acceptable(incoming) else new_request_id()
    g.request_id = rid
    g.started = time.perf_counter()
    request_id.set(rid)


def _finish(response: Response) -> Response:
    method, path, status = request.method, request.path, response.status_code
    response.headers["X-Request-ID"] = g.request_id
    if logger.isEnabledFor(logging.INFO):
        caller = g.get("caller")
        extra = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
            "key_id": caller.key_id if caller is not None else None,
            "remote_addr": request.remote_addr,
        }
        # What logger.info does, less the walk up the stack to find the caller (about a
        # sixth of the cost of the line): the caller is this function.
        args = (method, path, status)
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, _LINE, "%s %s %s", args, None, "_finish", extra
        )
        logger.handle(record)
    return response


_LINE = _finish.__code__.co_firstlineno


def _forget(_error: BaseException | None) -> None:
    request_id.set(None)


def install_request_log(app: Flask) -> None:
    """Registered first, so the request id exists before authentication or limits answer."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_forget)
