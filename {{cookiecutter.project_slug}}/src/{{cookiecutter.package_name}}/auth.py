"""Who is calling: one key per request, from a header only, checked in one place.

Keys in the URL are refused (400) because URLs end up in proxy logs, browser history and
Referer headers. Every failed check answers the same 401, so a client learns nothing about
which check failed. A valid key used from outside its entry's networks gets the same 403 as a
missing scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, g, request

from .errors import fail, problem
from .keys import InvalidKey, KeyRing, MalformedKey

URL_KEY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "access_token"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}
# Longer than any key; bounds the work done on a hostile header.
MAX_PRESENTED = 256


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller, as views get it from :func:`current_caller`."""

    key_id: str
    tenant: str
    scopes: frozenset[str]


def presented_key(environ: Mapping[str, Any]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; None when neither is sent.

    Raises MalformedKey for anything that cannot be a key, including two different keys.
    Reads the WSGI environ: Werkzeug's header view rebuilds the variable name and raises
    and catches a KeyError for each absent header, on every request.
    """
    bearer = None
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise MalformedKey
        bearer = credentials.strip()
    api_key = environ.get("HTTP_X_API_KEY")
    if api_key is not None:
        api_key = api_key.strip()
    if bearer is not None and api_key is not None and bearer != api_key:
        raise MalformedKey
    key = bearer if bearer is not None else api_key
    # Header values arrive as latin-1 text: anything non-ASCII cannot be a key, and
    # rejecting it here keeps undecodable bytes away from hashing and comparison.
    if key is not None and (len(key) > MAX_PRESENTED or not key.isascii()):
        raise MalformedKey
    return key


def _identify(ring: KeyRing, https_only: bool) -> Callable[[], Response | None]:
    # Callers are frozen: one per configured key serves every request.
    callers = {key.key_id: Caller(key.key_id, key.tenant, key.scopes) for key in ring}

    def identify() -> Response | None:
        environ = request.environ
        # Only a request with a query string needs it parsed (most have none).
        if environ.get("QUERY_STRING") and any(name.lower() in URL_KEY_PARAMETERS for name in request.args):
            g.auth_failure = "key_in_url"
            return problem(400, "API keys are not accepted in the URL; send an Authorization header.")
        g.caller = None
        if https_only and not request.is_secure:
            # Plain HTTP from a peer that is not a named proxy, or a proxy that took plain HTTP
            # from its client: any key on it crossed the network in cleartext. Only a route that
            # needs a key refuses it (current_caller): a health check over HTTP is no failure.
            g.insecure_transport = True
            return None
        identified = None
        try:
            key = presented_key(environ)
            if key is not None:
                found = ring.verify(key)
                environ["app.key_id"] = found.key_id
                # REMOTE_ADDR is the peer, or what a trusted proxy reported (proxy.py): a client
                # cannot choose it. Outside its networks, a valid key is most likely a stolen one.
                if found.allows(environ.get("REMOTE_ADDR")):
                    identified = callers[found.key_id]
                else:
                    g.auth_failure = "outside_networks"
                    g.refused_key_id = found.key_id
        except InvalidKey as error:
            g.auth_failure = error.reason
        g.caller = identified
        return None

    return identify


def install_auth(app: Flask, ring: KeyRing, *, https_only: bool) -> None:
    """Identify the caller before anything else runs, rate limiting included. With
    ``https_only``, no key is even read from a request that did not arrive over HTTPS."""
    app.before_request(_identify(ring, https_only))


def caller() -> Caller | None:
    """The caller this request authenticated as, or None: the one accessor for everyone."""
    identified: Caller | None = g.get("caller")
    return identified


def failure() -> str | None:
    """Why authentication failed: for the request log and metrics, never for the client."""
    reason: str | None = g.get("auth_failure")
    return reason


def refused_key_id() -> str | None:
    """The id of a valid key refused for where it was used from: for the request log only."""
    key_id: str | None = g.get("refused_key_id")
    return key_id


def current_caller() -> Caller:
    """The caller of a protected view: a request without a valid key stops here with 401."""
    identified = caller()
    if identified is None:
        if g.get("insecure_transport"):
            g.auth_failure = "insecure_transport"
            fail(403, "API keys are accepted over HTTPS only: connect through the TLS-terminating proxy.")
        if failure() == "outside_networks":
            fail(403)  # the body of any 403: nothing names the networks
        g.auth_failure = failure() or "missing"
        fail(401, headers=CHALLENGE)
    return identified


def scoped_blueprint(
    name: str,
    import_name: str,
    *,
    url_prefix: str,
    scope: str | None,
    write_scope: str | None = None,
) -> Blueprint:
    """A blueprint whose every route needs a valid key with ``scope``.

    ``scope=None`` accepts any valid key. Methods that change state need ``write_scope``
    when it is given. This is the one place a blueprint says what it needs.
    """
    blueprint = Blueprint(name, import_name, url_prefix=url_prefix)

    @blueprint.before_request
    def require_scope() -> None:
        scopes = current_caller().scopes
        needed = scope if request.method in SAFE_METHODS or write_scope is None else write_scope
        if needed is not None and needed not in scopes:
            fail(403)

    return blueprint
