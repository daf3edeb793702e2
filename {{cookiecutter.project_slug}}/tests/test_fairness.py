"""No single client address can take a worker: the per-address connection cap, the bounded life
of a connection, the write deadline, gunicorn's own refusals as problem+json, and the behaviours
of gunicorn and gevent that worker.py relies on (CWE-400, CWE-770, OWASP API4:2023).

The fast tests drive the real worker class, with gunicorn's own request handling, over real
sockets in this process: each fails on a gunicorn or gevent release that changes what the worker
relies on. The slow ones do the same through a real gunicorn over TLS.
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.ssl
import pytest
from flask import Flask
from gevent.server import StreamServer
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.metrics import SERIES
from {{ cookiecutter.package_name }}.settings import ConfigError, settings_from
from {{ cookiecutter.package_name }}.worker import (
    Door,
    FairGeventWorker,
    PendingTLS,
    Throttle,
    check_worker_class,
    client_of,
    deferred_tls,
    security_headers,
)

from .support import ATTACKER, CLIENT, KeySet, Server, bearer, connect_from

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
PROBLEM_JSON = "application/problem+json"
SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "content-security-policy",
    "referrer-policy",
    "x-frame-options",
    "cache-control",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """The messages a logger wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 answers in ``raw``, each with its headers (lower-case names) and body."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        found.append((int(status_line.split()[1]), headers, raw[:length]))
        raw = raw[length:]
    return found


# --- who counts as one client --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"),
        ("2001:DB8:1:3::1", "2001:db8:1:3::/64"),
        ("", ""),
    ],
    ids=["ipv4", "ipv4-mapped", "ipv6", "same-64", "next-64", "unix-socket"],
)
def test_clients_are_counted_per_ipv4_address_and_per_ipv6_64(peer: str, key: str) -> None:
    assert client_of(peer)[0] == key


def door(
    env: dict[str, str], capacity: int = 1000, clock: Callable[[], float] = time.monotonic, **more: str
) -> Door:
    return Door(settings_from({**env, **more}), capacity, clock)


def test_an_address_at_its_cap_is_refused_until_one_of_its_connections_leaves(env: dict[str, str]) -> None:
    counting = door(env, CONNECTIONS_PER_ADDRESS="3")
    attacker, other = counting.peer("192.0.2.7"), counting.peer("192.0.2.8")
    held = [counting.enter(attacker) for _ in range(3)]
    assert None not in held
    assert counting.enter(attacker) is None
    assert counting.enter(other) is not None
    counting.leave(held[0])
    assert counting.enter(attacker) is not None


def test_addresses_of_one_ipv6_64_share_one_cap(env: dict[str, str]) -> None:
    counting = door(env, CONNECTIONS_PER_ADDRESS="2")
    assert counting.enter(counting.peer("2001:db8:5:6::1")) is not None
    assert counting.enter(counting.peer("2001:db8:5:6::2")) is not None
    assert counting.enter(counting.peer("2001:db8:5:6:1234::9")) is None
    assert counting.enter(counting.peer("2001:db8:5:7::1")) is not None


@pytest.mark.parametrize("proxy", ["10.0.0.5", "::ffff:10.0.0.5", "unix"], ids=["ipv4", "mapped", "unix"])
def test_a_trusted_proxy_has_its_own_higher_cap(env: dict[str, str], proxy: str) -> None:
    counting = door(
        env,
        FORWARDED_ALLOW_IPS="10.0.0.5, ::ffff:10.0.0.6",
        CONNECTIONS_PER_ADDRESS="2",
        CONNECTIONS_PER_PROXY="5",
    )
    peer = counting.peer("" if proxy == "unix" else proxy)
    assert (peer.cap, peer.variable) == (5, "CONNECTIONS_PER_PROXY")
    assert counting.peer("::ffff:10.0.0.6").cap == 5  # trusted in its mapped spelling
    assert [counting.enter(peer) is not None for _ in range(6)] == [True] * 5 + [False]
    assert counting.peer("10.0.0.7").variable == "CONNECTIONS_PER_ADDRESS"


def test_counts_are_kept_only_for_the_clients_connected_now(env: dict[str, str]) -> None:
    counting = door(env)
    lives = [counting.enter(counting.peer(f"192.0.2.{n}")) for n in range(1, 200)]
    for life in lives:
        assert life is not None
        counting.leave(life)
    assert (counting.held, counting.total) == ({}, 0)


def test_a_connection_ends_after_its_requests_or_its_age(env: dict[str, str]) -> None:
    clock = Clock()
    counting = door(env, clock=clock, CONNECTION_MAX_REQUESTS="3", CONNECTION_MAX_AGE="60")
    life = counting.enter(counting.peer("192.0.2.7"))
    assert life is not None
    assert [counting.last_request(life) for _ in range(3)] == [False, False, True]
    young = counting.enter(counting.peer("192.0.2.8"))
    assert young is not None
    clock.now += 59
    assert not counting.last_request(young)
    clock.now += 1
    assert counting.last_request(young)


def test_every_answer_closes_its_connection_once_the_worker_is_nearly_full(env: dict[str, str]) -> None:
    counting = door(env, capacity=10)
    lives = [counting.enter(counting.peer(f"192.0.2.{n}")) for n in range(8)]
    assert not counting.last_request(lives[0])  # 8 of 10 open
    ninth = counting.enter(counting.peer("192.0.2.99"))
    assert ninth is not None
    assert counting.last_request(lives[0])  # 9 of 10: 90 %
    counting.leave(ninth)
    assert not counting.last_request(lives[1])


def test_a_warning_is_allowed_once_per_address_and_minute() -> None:
    clock = Clock()
    once = Throttle(60, clock)
    assert [once("192.0.2.7") for _ in range(1000)].count(True) == 1
    assert once("192.0.2.8")
    clock.now += 59
    assert not once("192.0.2.7")
    clock.now += 1
    assert once("192.0.2.7")


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("CONNECTIONS_PER_ADDRESS", 64),
        ("CONNECTIONS_PER_PROXY", 1000),
        ("CONNECTION_MAX_REQUESTS", 1000),
        ("CONNECTION_MAX_AGE", 300),
        ("WRITE_TIMEOUT", 30),
    ],
)
def test_connection_settings_have_defaults_and_refuse_what_is_not_a_positive_number(
    env: dict[str, str], variable: str, default: int
) -> None:
    assert settings_from(env).describe()[variable] == default
    for wrong in ("0", "-1", "many", "1.5"):
        with pytest.raises(ConfigError) as refused:
            settings_from({**env, variable: wrong})
        assert refused.value.variable == variable


@pytest.mark.parametrize("preload", ["false", "true"])
def test_gunicorns_own_answers_carry_the_headers_the_app_sends(
    make_app: Callable[..., Flask], preload: str
) -> None:
    app_headers = (
        make_app(HSTS_PRELOAD=preload).test_client().get("/healthz", base_url="https://localhost").headers
    )
    lines = security_headers(tls=True, preload=preload == "true").strip().split("\r\n")
    ours = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    assert ours == {name: app_headers[name] for name in SECURITY_HEADERS}
    plain = security_headers(tls=False, preload=False)
    assert "Strict-Transport-Security" not in plain


# --- the worker, with gunicorn's own request handling, over sockets in this process ------------


@pytest.fixture
def gunicorn_lines() -> Iterator[list[str]]:
    """What gunicorn's error log (its warnings, the worker's) says during a test."""
    lines = Lines()
    logger = logging.getLogger("gunicorn.error")
    logger.addHandler(lines)
    yield lines.messages
    logger.removeHandler(lines)


@pytest.fixture
def make_worker(
    env: dict[str, str],
    make_app: Callable[..., Flask],
    tls_files: tuple[Path, Path],
    gunicorn_lines: list[str],
) -> Iterator[Callable[..., FairGeventWorker]]:
    """The worker class as gunicorn builds it (its own constructor, configuration and logger),
    serving the app; ``tls=True`` sets the certificate, as gunicorn.conf.py does."""
    workers: list[FairGeventWorker] = []

    def build(
        *, worker_connections: int = 20, keepalive: int = 2, tls: bool = False, wsgi: Any = None, **more: str
    ) -> FairGeventWorker:
        cfg = Config()
        cfg.set("worker_connections", worker_connections)
        cfg.set("keepalive", keepalive)
        if tls:
            cfg.set("certfile", str(tls_files[0]))
            cfg.set("keyfile", str(tls_files[1]))
        listener = socket.create_server(("127.0.0.1", 0))
        worker = FairGeventWorker(0, os.getppid(), [listener], None, 30, cfg, Logger(cfg))
        worker.wsgi = make_app() if wsgi is None else wsgi
        worker.prepare(settings_from({**env, **more}))
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        worker.tmp.close()
        worker.sockets[0].close()


def serve(worker: FairGeventWorker, data: bytes, peer: str = "192.0.2.7") -> bytes:
    """One connection carrying ``data`` (then the client's end of sending), handled by the worker
    here and now; what the client received until the server closed."""
    listener = worker.sockets[0]
    client = socket.create_connection(listener.getsockname(), timeout=10)
    connection, _ = listener.accept()
    with client, connection:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        worker.handle(listener, connection, (peer, 40000))
        received = b""
        # Closed with requests unread, the connection is reset by the kernel, after what was sent.
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
        return received


def test_the_last_request_a_connection_may_carry_is_answered_connection_close(
    make_worker: Callable[..., FairGeventWorker],
) -> None:
    """gunicorn ignores a Connection header from the app; the worker marks the request
    (``req.force_close()``) and gunicorn answers "Connection: close", then ends the connection."""
    worker = make_worker(CONNECTION_MAX_REQUESTS="3")
    received = answers(serve(worker, HEALTH * 5))
    assert [status for status, _, _ in received] == [200, 200, 200]
    assert [headers["connection"] for _, headers, _ in received] == ["keep-alive", "keep-alive", "close"]


def test_answers_say_connection_close_when_the_worker_is_nearly_full(
    make_worker: Callable[..., FairGeventWorker],
) -> None:
    worker = make_worker(worker_connections=10)
    others = [worker.door.enter(worker.door.peer(f"192.0.2.{n}")) for n in range(100, 108)]
    received = answers(serve(worker, HEALTH * 2))  # its own connection makes 9 of 10
    assert [(status, headers["connection"]) for status, headers, _ in received] == [(200, "close")]
    for life in others:
        assert life is not None
        worker.door.leave(life)
    assert answers(serve(worker, HEALTH))[0][1]["connection"] == "keep-alive"


def test_a_connection_over_the_cap_is_closed_before_a_byte_is_read(
    make_worker: Callable[..., FairGeventWorker], gunicorn_lines: list[str]
) -> None:
    worker = make_worker(CONNECTIONS_PER_ADDRESS="2")
    held = [worker.door.enter(worker.door.peer("192.0.2.7")) for _ in range(2)]
    refused_before = SERIES.get_sample_value("api_connections_refused_total") or 0.0
    assert [serve(worker, HEALTH, peer="192.0.2.7") for _ in range(5)] == [b""] * 5
    assert answers(serve(worker, HEALTH, peer="192.0.2.8"))[0][0] == 200
    assert SERIES.get_sample_value("api_connections_refused_total") == refused_before + 5
    warnings = [line for line in gunicorn_lines if "Connection cap reached" in line]
    assert warnings == [
        "Connection cap reached: ip=192.0.2.7 holds 2 connections in this worker (CONNECTIONS_PER_ADDRESS); "
        "its new connections are closed at once"
    ]
    assert all(life is not None for life in held)


def test_the_open_connections_are_reported_as_they_open_and_close(
    make_worker: Callable[..., FairGeventWorker],
) -> None:
    seen: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(int(SERIES.get_sample_value("api_connections_open") or 0))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    worker = make_worker(wsgi=app)
    serve(worker, HEALTH)
    assert seen == [1]
    assert SERIES.get_sample_value("api_connections_open") == 0


def test_pipelined_requests_take_turns_with_the_other_connections(
    make_worker: Callable[..., FairGeventWorker],
) -> None:
    """Requests a client pipelined are all in the buffer: no read or write waits between them,
    and without a turn for the others they would be served back to back."""
    order: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        order.append("pipelined")
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    def other() -> None:
        for _ in range(6):
            order.append("other")
            gevent.sleep(0)

    worker = make_worker(wsgi=app)
    greenlets = [gevent.spawn(serve, worker, HEALTH * 4), gevent.spawn(other)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert order.count("pipelined") == 4
    assert "pipelined,pipelined" not in ",".join(order), order


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /a b c sekrit\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /" + b"s" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Sekrit: " + b"s" * 9000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nX-Sekrit: s\r\n\r\n", 400),
    ],
    ids=["malformed-request-line", "uri-too-long", "header-too-large", "http-1.1-without-host"],
)
def test_requests_gunicorn_refuses_get_problem_json_with_the_security_headers(
    make_worker: Callable[..., FairGeventWorker], gunicorn_lines: list[str], request_bytes: bytes, status: int
) -> None:
    worker = make_worker(tls=True)
    raw = serve(worker, request_bytes)
    [(answered, headers, body)] = answers(raw)
    assert answered == status
    assert headers["content-type"] == PROBLEM_JSON
    assert headers["connection"] == "close"
    assert set(SECURITY_HEADERS) <= set(headers)
    problem = json.loads(body)
    assert (problem["status"], problem["type"]) == (status, "about:blank")
    assert problem["title"]
    assert problem["detail"]
    assert b"sekrit" not in raw.lower()
    assert b"<html" not in raw
    # gunicorn's own warning line is still written (masked, like every line, by the log filter).
    assert any(line.startswith("Invalid request from ip=192.0.2.7") for line in gunicorn_lines)


def test_http_1_0_without_host_is_served(make_worker: Callable[..., FairGeventWorker]) -> None:
    assert answers(serve(make_worker(), b"GET /healthz HTTP/1.0\r\n\r\n"))[0][0] == 200


def test_a_client_that_stops_reading_is_cut_off_by_the_write_deadline_in_one_line(
    make_worker: Callable[..., FairGeventWorker], gunicorn_lines: list[str]
) -> None:
    def large(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", str(64 << 20))])
        return [b"x" * (64 << 20)]

    worker = make_worker(wsgi=large, WRITE_TIMEOUT="1")
    listener = worker.sockets[0]
    client = socket.create_connection(listener.getsockname(), timeout=10)
    connection, _ = listener.accept()
    with client, connection:
        client.sendall(HEALTH)
        serving = threading.Thread(target=worker.handle, args=(listener, connection, ("192.0.2.7", 40000)))
        serving.start()
        serving.join(20)
        held = serving.is_alive()  # the client never reads: without a deadline, forever
    serving.join(10)  # the client's socket is closed now, which ends a held write too
    assert not held
    assert gunicorn_lines == [
        "Connection from ip=192.0.2.7 cut off: an answer not taken in 1 s (WRITE_TIMEOUT)"
    ]
    assert worker.door.total == 0


def test_tls_is_served_only_by_the_worker_that_secures_deferred_connections() -> None:
    check_worker_class(FairGeventWorker, tls=True)
    check_worker_class(GeventWorker, tls=False)
    with pytest.raises(ConfigError) as refused:
        check_worker_class(GeventWorker, tls=True)
    assert refused.value.variable == "worker_class"


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        (GeventWorker.handle, ["self", "listener", "client", "addr"]),
        (GeventWorker.handle_request, ["self", "listener_name", "req", "sock", "addr"]),
        (GeventWorker.handle_error, ["self", "req", "client", "addr", "exc"]),
    ],
    ids=["handle", "handle_request", "handle_error"],
)
def test_gunicorn_calls_the_methods_the_worker_overrides_with_the_arguments_it_takes(
    method: Callable[..., Any], parameters: list[str]
) -> None:
    assert list(inspect.signature(method).parameters) == parameters


# --- gevent's server and the TLS handshake, in this process ---------------------------------------


def through_gevent(
    worker: FairGeventWorker,
    tls_files: tuple[Path, Path],
    client: Callable[[int], Any],
    stop_after: float | None = None,
) -> Any:
    """gevent's server, as gunicorn's gevent worker starts it (the ``ssl_context`` hook's context,
    and the worker's ``handle``), serving one client that runs in a thread; its result. With
    ``stop_after``, the server closes its listening socket then, as a graceful stop does."""
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    listener = worker.sockets[0]
    listener.setblocking(False)  # as gunicorn's listeners are underneath, once gevent patched them

    def handle(connection: Any, addr: Any) -> None:
        worker.handle(listener, connection, addr)

    server = StreamServer(listener, handle, ssl_context=deferred_tls(context))
    server.start()
    port = listener.getsockname()[1]
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(client(port)), daemon=True)
    try:
        thread.start()
        started = time.monotonic()
        while thread.is_alive() and time.monotonic() - started < 20:
            if stop_after is not None and time.monotonic() - started > stop_after and not server.closed:
                server.close()
            gevent.sleep(0.02)
    finally:
        server.stop()
    assert result, "the client did not finish"
    return result[0]


def https_exchange(port: int, context: ssl.SSLContext, pause: float = 0) -> bytes:
    """A request on a new TLS connection from 127.0.0.3 (its handshake ``pause`` seconds after the
    TCP connection), read until the server closes."""
    with connect_from(CLIENT, port) as raw:
        time.sleep(pause)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            received = b""
            while chunk := tls.recv(65536):
                received += chunk
            return received


def test_gevents_server_hands_the_worker_the_connection_untouched_and_the_worker_secures_it(
    make_worker: Callable[..., FairGeventWorker], tls_files: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    """gevent calls ``ssl_context.wrap_socket(sock, server_side=True)`` and serves what it returns;
    the worker runs the handshake, and gunicorn's own ``do_handshake`` (do_handshake_on_connect
    is off by default) finds it done."""
    worker = make_worker(tls=True)
    assert worker.cfg.do_handshake_on_connect is False
    handed: list[object] = []
    handle = worker.handle

    def spy(listener: Any, connection: Any, addr: Any) -> None:
        handed.append(connection)
        handle(listener, connection, addr)

    worker.handle = spy
    received = answers(through_gevent(worker, tls_files, lambda port: https_exchange(port, client_context)))
    assert [status for status, _, _ in received] == [200]
    assert [type(connection) for connection in handed] == [PendingTLS]


def test_a_connection_in_its_handshake_when_a_graceful_stop_begins_is_still_served(
    make_worker: Callable[..., FairGeventWorker], tls_files: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    """A graceful stop closes the listening socket, then waits for the connections in progress:
    one still in its TLS handshake is served to the end, although gunicorn asks for the address
    of a listener that is closed by then."""
    worker = make_worker(tls=True)
    exchange = through_gevent(
        worker, tls_files, lambda port: https_exchange(port, client_context, pause=1.0), stop_after=0.3
    )
    assert [status for status, _, _ in answers(exchange)] == [200]


def test_a_handshake_that_stalls_is_closed_at_the_deadline(
    make_worker: Callable[..., FairGeventWorker], tls_files: tuple[Path, Path]
) -> None:
    worker = make_worker(tls=True, keepalive=1)

    def client(port: int) -> float:
        with connect_from(ATTACKER, port, timeout=15) as raw:
            raw.sendall(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello, then nothing
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                raw.recv(1)
            return time.monotonic() - started

    assert 0.9 <= through_gevent(worker, tls_files, client) < 10
    assert worker.door.total == 0


# --- through a real gunicorn over TLS -------------------------------------------------------------


def tls_connection(port: int, context: ssl.SSLContext, source: str) -> ssl.SSLSocket:
    return context.wrap_socket(connect_from(source, port), server_hostname="localhost")


def refused_at_once(port: int, context: ssl.SSLContext, source: str) -> bool:
    """True when the server closes a new connection from ``source`` before its handshake."""
    started = time.monotonic()
    try:
        tls_connection(port, context, source).close()
    except (ssl.SSLError, ConnectionError):
        return time.monotonic() - started < 5
    return False


def https_get(
    port: int, context: ssl.SSLContext, path: str, source: str, **headers: str
) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection(
        "localhost", port, timeout=10, context=context, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape(port: int, context: ssl.SSLContext, key: Any) -> dict[str, float]:
    status, body = https_get(port, context, "/metrics", CLIENT, **bearer(key))
    assert status == 200, body
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("api_connections")
    }


def eventually(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_the_next_connection_of_an_address_at_its_cap_is_closed_at_once_while_others_are_served(
    start_server: Callable[..., Server], client_context: ssl.SSLContext, keys: KeySet
) -> None:
    scraper = mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"])
    server = start_server(
        # Idle connections are held here for the length of the test, not the usual 5 s.
        "--keep-alive",
        "60",
        API_KEYS=f"{keys.entries},{scraper.entry}",
        CONNECTIONS_PER_ADDRESS="4",
        CONNECTIONS_PER_PROXY="7",
        FORWARDED_ALLOW_IPS="127.0.0.4",
    )
    held = [tls_connection(server.port, client_context, ATTACKER) for _ in range(4)]
    proxied = [tls_connection(server.port, client_context, "127.0.0.4") for _ in range(7)]
    try:
        assert [refused_at_once(server.port, client_context, ATTACKER) for _ in range(20)] == [True] * 20
        assert refused_at_once(server.port, client_context, "127.0.0.4")
        assert https_get(server.port, client_context, "/healthz", CLIENT)[0] == 200
        samples = scrape(server.port, client_context, scraper)
        assert samples["api_connections_open"] >= 4 + 7 + 1  # the scrape's own connection too
        assert samples["api_connections_refused_total"] == 21
    finally:
        for connection in held + proxied:
            connection.close()
    # Its connections closed, the address is served again.
    assert eventually(lambda: not refused_at_once(server.port, client_context, ATTACKER))
    logs = server.stop()
    warnings = [line for line in logs.splitlines() if "Connection cap reached" in line]
    assert len(warnings) == 2, warnings  # one per address, never one per refused connection
    assert "ip=127.0.0.2 holds 4 connections in this worker (CONNECTIONS_PER_ADDRESS)" in warnings[0]
    assert "ip=127.0.0.4 holds 7 connections in this worker (CONNECTIONS_PER_PROXY)" in warnings[1]
    assert "Traceback" not in logs


@pytest.mark.slow
def test_a_kept_alive_connection_closes_after_its_last_request_saying_so(
    start_server: Callable[..., Server], client_context: ssl.SSLContext
) -> None:
    server = start_server(CONNECTION_MAX_REQUESTS="3")
    connection = http.client.HTTPSConnection(
        "localhost", server.port, timeout=10, context=client_context, source_address=(CLIENT, 0)
    )
    try:
        seen = []
        for _ in range(3):
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            seen.append((response.status, response.getheader("Connection")))
        assert seen == [(200, "keep-alive"), (200, "keep-alive"), (200, "close")]
        assert connection.sock is None  # http.client closed it, as the answer said
    finally:
        connection.close()


@pytest.mark.slow
def test_answers_say_connection_close_near_worker_connections(
    start_server: Callable[..., Server], client_context: ssl.SSLContext
) -> None:
    server = start_server("--worker-connections", "10")
    assert https_get(server.port, client_context, "/healthz", CLIENT)[0] == 200
    idle = [connect_from(ATTACKER, server.port) for _ in range(8)]
    try:
        time.sleep(0.5)  # let the worker accept them
        connection = http.client.HTTPSConnection(
            "localhost", server.port, timeout=10, context=client_context, source_address=(CLIENT, 0)
        )
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        connection.close()
        assert (response.status, response.getheader("Connection")) == (200, "close")
    finally:
        for sock in idle:
            sock.close()
