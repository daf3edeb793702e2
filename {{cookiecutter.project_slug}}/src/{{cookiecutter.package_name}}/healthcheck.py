"""The health check of a container (the Dockerfile's HEALTHCHECK) or a supervisor: ``GET /healthz``
where the service listens, read from BIND as the service reads it, over HTTPS whenever the
service serves TLS. A check that called a fixed port would mark a healthy service on another
port unhealthy, and one that called plain HTTP would never meet the TLS the clients meet.

``python -m {{ cookiecutter.package_name }}.healthcheck`` exits 0 on a 200, else 1 with one line.
"""

from __future__ import annotations

import http.client
import ipaddress
import ssl
import sys
from pathlib import Path

from .settings import ConfigError, health_target

GUNICORN_PORT = 8000  # gunicorn's port when BIND names none
TIMEOUT = 2  # seconds: the HEALTHCHECK allows 3 for the whole command


def address(bind: str) -> tuple[str, int]:
    """The host and port to call for a BIND in gunicorn's notation (``HOST``, ``HOST:PORT``,
    ``[IPV6]:PORT``, ``tcp://…``)."""
    if bind.startswith(("unix:", "fd://")):
        raise ValueError("BIND: names a socket; the health check calls a TCP address")
    netloc = bind.removeprefix("tcp://")
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = netloc.partition(":")
    try:
        number = int(port) if port else GUNICORN_PORT
    except ValueError:
        raise ValueError("BIND: the port is not a number") from None
    return reachable(host), number


def reachable(host: str) -> str:
    """The address to call for a BIND host: a server bound to every address (none named, or the
    unspecified address) answers on loopback of the same family, which the check can always reach."""
    if not host:
        return "127.0.0.1"
    try:
        bound = ipaddress.ip_address(host)
    except ValueError:  # a name
        return host
    if not bound.is_unspecified:
        return host
    return "::1" if bound.version == 6 else "127.0.0.1"


def connection(bind: str, certificate: Path | None) -> http.client.HTTPConnection:
    """To the service: over TLS trusting its own certificate (a chain of one is enough) but not
    its name, since the check calls an address; over HTTP only when it serves no TLS itself."""
    host, port = address(bind)
    if certificate is None:
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    context = ssl.create_default_context(cafile=str(certificate))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)


def main() -> int:
    try:
        bind, certificate = health_target()
        server = connection(bind, certificate)
        server.request("GET", "/healthz", headers={"Connection": "close"})
        status = server.getresponse().status
        server.close()
    except (ConfigError, ValueError) as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as error:
        print(f"unhealthy: GET /healthz: {type(error).__name__}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: GET /healthz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
