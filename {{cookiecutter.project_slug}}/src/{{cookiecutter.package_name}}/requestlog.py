"""One log line per request, with a request id and the key id, and never the query string or
a header: those are where keys travel."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from .keys import KEY_PREFIX
from .logging import request_id

logger = logging.getLogger(__name__)

# A client's request id is echoed and logged: accept only short, plain tokens.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def _acceptable(incoming: str) -> bool:
    # A key sent as a request id would be echoed back and logged (masked, so useless).
    return REQUEST_ID.fullmatch(incoming) is not None and f"{KEY_PREFIX}_" not in incoming


def _start() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _acceptable(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()
    request_id.set(g.request_id)


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.request_id
    caller = g.get("caller")
    logger.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
            "key_id": caller.key_id if caller is not None else None,
            "remote_addr": request.remote_addr,
        },
    )
    return response


def _forget(_error: BaseException | None) -> None:
    request_id.set(None)


def install_request_log(app: Flask) -> None:
    """Registered first, so the request id exists before authentication or limits answer."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_forget)
