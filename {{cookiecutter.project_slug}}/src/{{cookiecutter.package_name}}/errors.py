"""problem+json (RFC 9457) for every error, so no failure answers with HTML, a traceback, a key or
a redirect built from the client's Host header."""

from __future__ import annotations

from http import HTTPStatus
from typing import NoReturn

from flask import Flask, Response, abort, g, json, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

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


def problem(status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An RFC 9457 problem response; ``detail`` must never quote request data."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or DETAILS.get(status, HTTPStatus(status).description),
        "request_id": g.get("request_id"),
    }
    return Response(json.dumps(body), status, headers=headers, mimetype=PROBLEM_JSON)


def fail(status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> NoReturn:
    """Stop the request with a problem response."""
    abort(problem(status, detail, headers))


def _no_routing_redirect() -> Response | None:
    # Routing would redirect a path without the trailing slash its route has to a URL built from
    # the Host header, in HTML, and Flask answers that redirect itself, before any error
    # handler: an API has one spelling for each resource, and says so with 404.
    if isinstance(request.routing_exception, RequestRedirect):
        return problem(404)
    return None


def _from_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return problem(status, headers=headers)


def _malformed_body(_error: Exception) -> Response:
    return problem(400, "The request body is malformed.")


def install_errors(app: Flask) -> None:
    """Answer every HTTP error, including unhandled exceptions (500), with problem+json.

    Flask logs an unhandled exception once (with its traceback, masked by the log filter)
    before it calls the 500 handler.
    """
    app.url_map.merge_slashes = False  # "/v1//items" would be redirected too
    app.before_request(_no_routing_redirect)
    app.register_error_handler(HTTPException, _from_http_exception)
    # gunicorn raises these while a view reads a body that breaks HTTP framing (a bad chunk,
    # fewer bytes than Content-Length): the client's fault, not a 500.
    app.register_error_handler(ParseException, _malformed_body)
    app.register_error_handler(NoMoreData, _malformed_body)
