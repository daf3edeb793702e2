"""Forwarded headers count only from the proxies the operator named, so a client cannot pick
its own address (to dodge rate limits) or scheme (to get HSTS on plain HTTP)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

FORWARDED_HEADERS = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_X_REAL_IP",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Set in the environ when a trusted proxy reported a client that is not an address: the request
# gate refuses it (400), since it can be counted against no client's budget.
# What may follow "[v6]" in a hop: its port, in ASCII digits.
PORT = re.compile(r":[0-9]+")
UNREADABLE_CLIENT = "app.forwarded_client_unreadable"


def client_address(hop: str) -> str | None:
    """The address a proxy wrote as the last hop: ``a.b.c.d``, ``a.b.c.d:port``, an IPv6 address
    or ``[v6]:port``; None for anything else, which would give every distinct text a budget."""
    host = hop
    if hop.startswith("["):
        host, bracket, port = hop[1:].partition("]")
        # Only a port may follow: "[v6]x" names no address a proxy writes.
        if not bracket or (port and not PORT.fullmatch(port)):
            return None
    elif hop.count(":") == 1:
        host = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class TrustedProxies:
    """WSGI middleware: from a trusted peer, take the client address and scheme the proxy
    reports (the last hop, the one it added itself); from anyone, drop forwarded headers so
    nothing further in (Talisman included) can read a spoofed one."""

    def __init__(self, app: WSGIApplication, trusted: Iterable[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def _is_trusted(self, peer: str | None) -> bool:
        if not self.trusted or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._is_trusted(environ.get("REMOTE_ADDR")):
            forwarded_for = environ.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
            if forwarded_for:
                address = client_address(forwarded_for)
                if address is None:
                    environ[UNREADABLE_CLIENT] = True
                else:
                    environ["REMOTE_ADDR"] = address
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").rsplit(",", 1)[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        for name in FORWARDED_HEADERS:
            environ.pop(name, None)
        return self.app(environ, start_response)
