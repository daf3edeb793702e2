"""problem+json (RFC 9457) for every error, so no failure answers with HTML, a traceback, a key or
a redirect built from the client's Host header."""

from __future__ import annotations

from http import HTTPStatus
from typing import NoReturn

from flask import Flask, Response, abort, g, json
from werkzeug.exceptions import HTTPException, MethodNotAllowed

PROBLEM_JSON = "application/problem+json"

# Fixed texts only: a werkzeug description can quote request data, which may hold a key.
DETAILS = {
    400: "The request is malformed.",
    401: "A valid API key is required.",
    403: "The API key lacks a scope that this request needs.",
    404: "No such resource.",
    405: "The method is not allowed for this resource.",
    408: "The request body arrived too slowly.",
    413: "The request body is too large.",
    415: "The request body must be application/json.",
    422: "The request body is not valid for this resource.",
    429: "Too many requests; retry after the time in Retry-After.",
    500: "An internal error occurred; quote the request_id when reporting it.",
    503: "The service is unavailable; retry after the time in Retry-After.",
}


def problem(
    status: int,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> Response:
    """An RFC 9457 problem response; ``detail`` and ``errors`` must never quote request data."""
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or DETAILS.get(status, HTTPStatus(status).description),
        "request_id": g.get("request_id"),
    }
    if errors is not None:
        body["errors"] = errors
    return Response(json.dumps(body), status, headers=headers, mimetype=PROBLEM_JSON)


def fail(
    status: int,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> NoReturn:
    """Stop the request with a problem response."""
    abort(problem(status, detail, headers, errors))


def _from_http_exception(error: HTTPException) -> Response:
    headers = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        # Only a caller with a valid key gets here: the request gate answers 401 to the others.
        headers["Allow"] = ", ".join(error.valid_methods)
    return problem(error.code or 500, headers=headers)


def install_errors(app: Flask) -> None:
    """Answer every HTTP error, including unhandled exceptions (500), with problem+json.

    Flask logs an unhandled exception once (with its traceback, masked by the log filter)
    before it calls the 500 handler.
    """
    # "/v1//items" would be redirected to a URL built from the Host header, in HTML.
    app.url_map.merge_slashes = False
    app.register_error_handler(HTTPException, _from_http_exception)
