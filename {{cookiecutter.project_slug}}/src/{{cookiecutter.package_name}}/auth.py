"""Who is calling: one key per request, from a header only, checked in one place.

Keys in the URL are refused (400) because URLs end up in proxy logs, browser history and
Referer headers. Every failed check answers the same 401, so a client learns nothing about
which check failed: a valid key used from outside its entry's networks included, since a 403
would tell a thief that the stolen key still works. The request log and the metrics say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import g

from .keys import InvalidKey, KeyRing, MalformedKey

URL_KEY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "access_token"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}
# Longer than any key; bounds the work done on a hostile header.
MAX_PRESENTED = 256
OUTSIDE_NETWORKS = "outside_networks"


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


def key_in_url(query_names: Iterable[str]) -> bool:
    """True when a query parameter's name is one that carries keys, in any letter case."""
    return any(name.lower() in URL_KEY_PARAMETERS for name in query_names)


class Authenticator:
    """Verifies the presented key and leaves the outcome on ``g`` for everyone else to read."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        # Callers are frozen: one per configured key serves every request.
        self.callers = {key.key_id: Caller(key.key_id, key.tenant, key.scopes) for key in ring}

    def identify(self, environ: dict[str, Any]) -> Caller | None:
        """The caller, or None with the reason in ``g.auth_failure`` (None: no key was sent)."""
        try:
            key = presented_key(environ)
            if key is None:
                return None
            found = self.ring.verify(key)
        except InvalidKey as error:
            g.auth_failure = error.reason
            return None
        environ["app.key_id"] = found.key_id
        # REMOTE_ADDR is the peer, or what a trusted proxy reported (proxy.py): a client cannot
        # choose it. Outside its networks, a valid key is most likely a stolen one.
        if not found.allows(environ.get("REMOTE_ADDR")):
            g.auth_failure = OUTSIDE_NETWORKS
            g.refused_key_id = found.key_id
            return None
        return self.callers[found.key_id]


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
    """The caller of a view that declared a key: the gate let no request without one reach it."""
    identified = caller()
    if identified is None:
        raise RuntimeError("current_caller() in a view that declares no key: declare @requires(...)")
    return identified
