"""A gevent worker in which no single client address can take all of it: a cap on the connections
each address holds, checked before any TLS work; a bounded life for every connection; deadlines
on the TLS handshake and on every write; and gunicorn's own refusals answered as problem+json
with the service's headers (CWE-400, CWE-770, OWASP API4:2023).

gunicorn documents a worker class named by its Python path as an extension point, and an
``ssl_context`` hook. Three methods overridden here have no documented signature (``handle``,
``handle_request``, ``handle_error``): each says why it is overridden, and
``tests/test_fairness.py`` fails on a gunicorn or gevent release that changes what this module
relies on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import gevent
import gevent.socket
from gunicorn.workers.ggevent import GeventWorker

from .serving import serving_settings
from .settings import ConfigError, Network, Settings

# Past this share of worker_connections, every answer closes its connection, so that kept-alive
# clients make room for new ones before the worker is full.
CROWDED = 0.9
# Seconds between two warnings about one address at its cap: one line, never one per connection.
WARN_EVERY = 60.0
# Addresses remembered for those warnings; past it the oldest are forgotten (or, if all are
# recent, all of them: a few extra lines, never unbounded memory).
WARNED_REMEMBERED = 1024
ONE_YEAR = 365 * 24 * 60 * 60
PROBLEM_JSON = "application/problem+json"
# Fixed texts: gunicorn's own messages quote the request, which may hold a key.
DETAILS = {
    400: "The request is malformed.",
    403: "The connection could not be secured.",
    414: "The request line is too long.",
    431: "The request header fields are too large.",
    500: "An internal error occurred.",
    501: "The request uses a transfer coding that is not supported.",
}


@dataclass(frozen=True)
class Peer:
    """What a connection is counted against: its client (an address, or an IPv6 /64) and the cap
    that applies to it, with the variable that sets that cap (for the log line)."""

    key: str
    cap: int
    variable: str


@dataclass
class Life:
    """One open connection: whom it counts against, when it opened, the requests it carried."""

    peer: Peer
    opened: float
    served: int = 0


def client_of(host: str) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """The key a peer address is counted under, and the address itself (None for a peer that
    has none, such as a UNIX socket's).

    IPv4 per address, also when a dual-stack socket shows it as ``::ffff:a.b.c.d``; IPv6 per
    /64, the block one subscriber is usually given, so rotating addresses within it gains nothing.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64))), address
    return str(address), address


def unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 network as the IPv4 network it is, as :func:`client_of` counts it."""
    first = network.network_address
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((first.ipv4_mapped, network.prefixlen - 96))
    return network


class Door:
    """The open connections of one worker, counted by client: a new one from a client that holds
    its cap is refused; each kept-alive connection ends after a number of requests or an age."""

    def __init__(
        self, settings: Settings, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_address = settings.connections_per_address
        self.per_proxy = settings.connections_per_proxy
        self.proxies = tuple(unmapped(network) for network in settings.forwarded_allow_ips)
        self.max_requests = settings.connection_max_requests
        self.max_age = settings.connection_max_age
        self.crowded_at = max(1, int(capacity * CROWDED))
        self.clock = clock
        self.held: dict[str, int] = {}
        self.total = 0

    def peer(self, host: str) -> Peer:
        key, address = client_of(host)
        # gunicorn trusts a peer without an address (a UNIX socket) as a proxy, and so does this.
        if address is None or any(address in network for network in self.proxies):
            return Peer(key, self.per_proxy, "CONNECTIONS_PER_PROXY")
        return Peer(key, self.per_address, "CONNECTIONS_PER_ADDRESS")

    def enter(self, peer: Peer) -> Life | None:
        """A new connection of ``peer``, counted; None, counting nothing, when it holds its cap."""
        held = self.held.get(peer.key, 0)
        if held >= peer.cap:
            return None
        self.held[peer.key] = held + 1
        self.total += 1
        return Life(peer, self.clock())

    def leave(self, life: Life) -> None:
        self.total -= 1
        held = self.held[life.peer.key] - 1
        if held:
            self.held[life.peer.key] = held
        else:
            del self.held[life.peer.key]  # memory grows with the clients connected now, not ever

    def last_request(self, life: Life) -> bool:
        """Count one more request on a connection; True when its answer must close it: the
        connection carried its share of requests or lived its time, or the worker is nearly full."""
        life.served += 1
        return (
            life.served >= self.max_requests
            or self.clock() - life.opened >= self.max_age
            or self.total >= self.crowded_at
        )


class Throttle:
    """True at most once per key and interval."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self.last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self.last) >= WARNED_REMEMBERED:
            recent = {k: t for k, t in self.last.items() if now - t < self.interval}
            self.last = recent if len(recent) < WARNED_REMEMBERED else {}
        self.last[key] = now
        return True


def security_headers(tls: bool, preload: bool) -> str:
    """The headers every answer of the service carries (headers.py), as raw header lines; HSTS
    only over TLS, where it means something."""
    lines = [
        "X-Content-Type-Options: nosniff",
        "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'",
        "Referrer-Policy: no-referrer",
        "X-Frame-Options: DENY",
        "Cache-Control: no-store",
    ]
    if tls:
        preloaded = "; preload" if preload else ""
        lines.append(f"Strict-Transport-Security: max-age={ONE_YEAR}; includeSubDomains{preloaded}")
    return "".join(f"{line}\r\n" for line in lines)


def problem_answer(status: int, headers: str) -> bytes:
    """A whole HTTP/1.1 answer: problem+json (RFC 9457) from fixed texts, then the connection closes."""
    try:
        known = HTTPStatus(status)
    except ValueError:
        known = HTTPStatus.BAD_REQUEST
    detail = DETAILS.get(known.value, known.description)
    body = json.dumps(
        {"type": "about:blank", "title": known.phrase, "status": known.value, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {known.value} {known.phrase}\r\nContent-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    )
    return head.encode("latin-1") + body


class ErrorPage:
    """Stands in for the client while gunicorn writes one of its HTML error pages: only the
    status is kept. gunicorn writes the page with ``util.write_error``, which asks for the
    socket's timeout (0.0: no blocking mode to switch) and calls ``sendall``."""

    def __init__(self) -> None:
        self.written = bytearray()

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.written += data

    @property
    def status(self) -> int | None:
        parts = bytes(self.written[:64]).split(b" ", 2)  # b"HTTP/1.1 400 Bad Request\r\n..."
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


class PendingTLS:
    """An accepted connection whose TLS has not begun: what gevent's server hands the worker in
    place of a TLS socket (see :func:`deferred_tls`)."""

    def __init__(self, sock: socket.socket, start: Callable[[], ssl.SSLSocket]) -> None:
        self.sock, self.start = sock, start

    def secure(self, seconds: float) -> ssl.SSLSocket:
        """The TLS socket, its handshake complete within ``seconds``; raises OSError (a reset, a
        failed handshake) or gevent.Timeout (a stalled one)."""
        with gevent.Timeout(seconds):
            # No TLS state until the client has sent something: a silent connection holds a
            # greenlet and a socket, not the buffers of a handshake (half the memory).
            gevent.socket.wait_read(self.sock.fileno())
            tls = self.start()
            try:
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
        return tls

    def close(self) -> None:
        self.sock.close()

    # gevent's server holds what wrap_socket returned in a with statement while the worker
    # serves it, as it would a socket.
    def __enter__(self) -> PendingTLS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def deferred_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``context`` leave accepted sockets untouched, each as a :class:`PendingTLS` that the
    worker secures once the per-address cap has admitted it, under a deadline.

    gevent's server wraps every accepted socket with ``ssl_context.wrap_socket(sock,
    server_side=True)`` (its documented ``ssl_context`` argument), in the connection's greenlet,
    before the worker sees it. A real wrap there would cost TLS work for connections the cap
    refuses; its handshake would have no deadline (half a ClientHello held a greenlet until the
    client left) and would race a graceful stop (gevent issue 2071); and a client that resets
    its connection first makes the wrap raise outside any handler, a traceback on stderr each
    time. The context is ours, made by gunicorn's ``ssl_context`` hook; it serves only this
    worker, which knows what to do with a :class:`PendingTLS`.
    """
    wrap = context.wrap_socket

    def wrap_socket(sock: socket.socket, *args: Any, **options: Any) -> PendingTLS:
        options["do_handshake_on_connect"] = False
        return PendingTLS(sock, lambda: wrap(sock, *args, **options))

    # Set on this one instance, not on a class: the context's class is whatever gunicorn's factory
    # made (gevent's SSLContext once the worker patched ssl), and a subclass defined here, at
    # import in the master before any patching, would be the blocking one. gevent's server calls
    # this as ``wrap_socket(sock, server_side=True)``: test_fairness.py's fast
    # test_gevents_server_hands_the_worker_the_connection_untouched_and_the_worker_secures_it
    # fails on a gevent release that calls it otherwise or serves the socket without it.
    context.wrap_socket = wrap_socket  # type: ignore[assignment]
    return context


@dataclass(frozen=True)
class Listener:
    """Stands in for a listening socket while gunicorn serves one of its connections: gunicorn
    asks it only for its address, which the real socket no longer knows once a graceful stop has
    closed it, as happens to a connection still in its TLS handshake at that moment."""

    address: Any

    def getsockname(self) -> Any:
        return self.address


def check_worker_class(worker_class: type, tls: bool) -> None:
    """Refuse to serve TLS with another worker class: the ``ssl_context`` hook's context hands
    each connection over untouched (:func:`deferred_tls`), which only this worker secures."""
    if tls and not issubclass(worker_class, FairGeventWorker):
        raise ConfigError(
            "worker_class",
            f"TLS at gunicorn needs {FairGeventWorker.__module__}.{FairGeventWorker.__name__}, "
            "which runs each handshake under a deadline",
        )


def lacks_host(req: Any) -> bool:
    """An HTTP/1.1 request without Host, which RFC 9112 (3.2) says to answer with 400 and gunicorn
    serves. gunicorn's request holds its version as a tuple and header names in capitals."""
    return bool(req.version >= (1, 1)) and not any(name == "HOST" for name, _ in req.headers)


def reset(sock: Any) -> None:
    """Make the coming close a reset: the kernel drops at once what it still held for the
    connection (an answer a client stopped reading, as nginx's ``reset_timedout_connection``),
    and keeps no TIME_WAIT entry for it (thousands a second when one address is refused)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def host_of(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else ""


class FairGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, with connections counted per client and bounded in time."""

    def run(self) -> None:
        self.prepare(serving_settings())
        super().run()

    def prepare(self, settings: Settings) -> None:
        """This worker's counts and answers, from the settings the master validated."""
        # Imported here, in the worker once the app is loaded: prometheus_client chooses its
        # multiprocess mode when first imported, and gunicorn loads this class in the master
        # before the master prepares the metrics directory.
        from . import metrics

        self.metrics = metrics
        self.listeners = {sock: Listener(sock.getsockname()) for sock in self.sockets}
        self.door = Door(settings, self.cfg.worker_connections)
        self.lives: dict[Any, Life] = {}  # by the socket gunicorn serves each connection on
        self.warn = Throttle(WARN_EVERY)
        self.write_timeout = settings.write_timeout
        self.headers = security_headers(self.cfg.is_ssl, settings.hsts_preload)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # Overridden because it is where gunicorn meets each connection, before a byte of it is
        # read: a client over its cap costs no TLS work, and the handshake gets its deadline.
        peer = self.door.peer(host_of(addr))
        life = self.door.enter(peer)
        if life is None:
            self.refused(peer)
            reset(client.sock if isinstance(client, PendingTLS) else client)
            client.close()
            return
        self.metrics.connections_open(self.door.total)
        connection = None
        try:
            connection = self.secured(client, addr)
            if connection is not None:
                self.lives[connection] = life
                # gunicorn asks the listener for its address only now, after the handshake: a
                # graceful stop may have closed it meanwhile (the stand-in still knows).
                super().handle(self.listeners[listener], connection, addr)
        finally:
            self.lives.pop(connection, None)
            self.door.leave(life)
            self.metrics.connections_open(self.door.total)

    def refused(self, peer: Peer) -> None:
        self.metrics.connection_refused()
        if self.warn(peer.key):
            self.log.warning(
                "Connection cap reached: ip=%s holds %d connections in this worker (%s); "
                "its new connections are closed at once",
                peer.key,
                peer.cap,
                peer.variable,
            )

    def secured(self, client: Any, addr: Any) -> Any:
        """The connection to serve: ``client`` itself over plain HTTP, else its TLS socket once
        the handshake completed within ``keepalive`` seconds; None when it failed or stalled.
        (gunicorn's own ``do_handshake`` call, made when ``do_handshake_on_connect`` is off,
        then finds the handshake done and returns at once.)"""
        if not isinstance(client, PendingTLS):
            return client
        try:
            return client.secure(self.cfg.keepalive)
        except (gevent.Timeout, OSError) as error:
            # Scanners, resets and plain-HTTP clients fail here all day: not worth a line each.
            self.log.debug("TLS handshake with ip=%s not completed: %s", host_of(addr), type(error).__name__)
            return None

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        # Overridden because it is where gunicorn holds each request before its answer starts.
        if lacks_host(req):
            self.log.warning("Invalid request from ip=%s: HTTP/1.1 without a Host header", host_of(addr))
            self.answer(sock, 400)
            raise StopIteration  # gunicorn's own signal to end the connection
        if self.door.last_request(self.lives[sock]):
            # gunicorn ignores a Connection header from the app (hop-by-hop); a request marked to
            # close makes it answer "Connection: close" and end the connection after the answer.
            req.force_close()
        # A client that stops reading holds its connection until its answer has waited this long
        # to be taken. (Reads have shorter deadlines of their own: keepalive, body.BODY_TIMEOUT.)
        sock.settimeout(self.write_timeout)
        try:
            served = super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            self.log.warning(
                "Connection from ip=%s cut off: an answer not taken in %d s (WRITE_TIMEOUT)",
                host_of(addr),
                self.write_timeout,
            )
            reset(sock)
            raise StopIteration from None
        # Let the other connections run before this one's next request: requests a client
        # pipelined are all in the buffer already, so no read or write would wait, and hundreds
        # of them would be served back to back while every other client waits.
        gevent.sleep(0)
        return served

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # Overridden because gunicorn answers what it cannot parse here (400, 414, 431, 501, 403
        # for TLS errors) with an HTML page and none of the service's headers. gunicorn still
        # chooses the status and writes its log lines, into a page kept here; the client gets
        # that status as problem+json.
        page = ErrorPage()
        super().handle_error(req, page, addr, exc)
        if page.status is not None:
            self.answer(client, page.status)

    def answer(self, sock: Any, status: int) -> None:
        """Write a problem answer that closes the connection, within the write deadline."""
        try:
            sock.settimeout(self.write_timeout)
            sock.sendall(problem_answer(status, self.headers))
        except OSError:
            self.log.debug("Failed to send error message.")
