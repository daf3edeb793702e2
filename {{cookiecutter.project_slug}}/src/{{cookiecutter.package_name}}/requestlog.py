"""One log line per request, under a request id the service made itself, and never the query
string or a header: those are where keys travel.

The id a client sends in ``X-Request-ID`` is never the request's id, so no client can give its
request another request's id, and it is kept (as ``client_request_id``) only when it is a
UUID: a format that cannot carry a key.
"""

from __future__ import annotations

import logging
import re
import secrets

from flask import Response, g, request

from .auth import caller, failure, refused_key_id
from .logging import Minted, Name, request_id

logger = logging.getLogger(__name__)

CLIENT_REQUEST_ID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


class RequestLog:
    """The request id at the start of a request, and its line at the end."""

    def start(self) -> None:
        # 128 random bits as 32 hex digits, the shape of a UUID's hex without uuid4()'s object;
        # made here from nothing a client sent, so the masking filter need not scan it (Minted).
        g.request_id = rid = Minted(secrets.token_hex(16))
        request_id.set(rid)

    def write(self, response: Response, duration: float) -> None:
        if logger.isEnabledFor(logging.INFO):
            identified = caller()
            method, path, status = request.method, request.path, response.status_code
            incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
            # A valid key refused (auth_failure says why) is named too: used from outside its
            # networks, it is probably stolen, and its id says which key to retire.
            key_id = identified.key_id if identified is not None else refused_key_id()
            extra = {
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
                "key_id": None if key_id is None else Name(key_id),
                "auth_failure": failure(),
                "remote_addr": request.remote_addr,
                "client_request_id": incoming if CLIENT_REQUEST_ID.fullmatch(incoming) else None,
            }
            # The path only in its field: a client's long path is written, cut, once per line.
            # The record is made and handled directly, through the two documented Logger methods
            # logger.info() ends in: the same record and handlers, without the search of the
            # call stack for a file and line that no formatter of the service writes.
            record = logger.makeRecord(
                logger.name, logging.INFO, __file__, 0, "request", (), None, extra=extra
            )
            logger.handle(record)
        # Lines logged after this one, on the same connection, belong to no request.
        request_id.set(None)
