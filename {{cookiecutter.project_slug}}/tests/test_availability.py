"""Availability while hostile clients hold connections open: hundreds of stalled TLS handshakes,
silent sockets and trickled headers, thousands of connections from one address, and clients that
never read their answers, through a real gunicorn over TLS, do not keep a legitimate client
waiting (CWE-400, CWE-770, OWASP API4:2023).

The attacker connects from 127.0.0.2 and the legitimate client from 127.0.0.3: the service counts
connections per client address.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from collections.abc import Callable

import pytest

from .support import ATTACKER, CLIENT, KeySet, RedisServer, Server, connect_from, script

pytestmark = pytest.mark.slow

hostile_clients = script("hostile_clients")

# At least 300 connections, held (each one the server closes is replaced) for at least 20 s.
HOSTILE = {"stalled": 150, "silent": 100, "trickle": 50}
SECONDS = 20
# gunicorn.conf.py's keepalive: the deadline for a TLS handshake, then for a request's headers.
KEEPALIVE = 5
# Linux's TCP states, as TCP_INFO reports them: the server sent FIN, or reset the connection.
CLOSED_STATES = (7, 8)


def assert_available(report) -> None:
    print("\n".join(report.lines()))
    assert report.held >= 300
    assert report.seconds >= SECONDS
    assert len(report.answers) >= 40, report.answers
    assert not report.failures, report.failures[:5]
    for kind in HOSTILE:
        lifetimes = report.lifetimes.get(kind, [])
        assert lifetimes, f"the server closed no {kind} connection"
        assert statistics.median(lifetimes) < KEEPALIVE + 3, (kind, statistics.median(lifetimes))


def attack(
    server: Server, context: ssl.SSLContext, keys: KeySet, counts: dict[str, int], seconds: float, **how
):
    target = hostile_clients.Target("127.0.0.1", server.port, context)
    return hostile_clients.run(
        target, keys.reader.secret, counts, seconds, source=ATTACKER, client_source=CLIENT, **how
    )


# The per-address cap is raised out of the way here: these tests prove that the deadlines alone
# bound what hundreds of held connections cost (from many addresses, as far as the cap can tell).
def test_stalled_silent_and_trickling_connections_do_not_delay_a_legitimate_client(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    server = start_server(CONNECTIONS_PER_ADDRESS="1000")
    assert_available(attack(server, client_context, keys, HOSTILE, SECONDS))


def test_the_same_with_two_workers_sharing_limits_in_redis(
    start_server: Callable[..., Server],
    redis_server: RedisServer,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    server = start_server(
        "--workers", "2", RATELIMIT_STORAGE_URI=redis_server.uri, CONNECTIONS_PER_ADDRESS="1000"
    )
    assert_available(attack(server, client_context, keys, HOSTILE, SECONDS))


def test_one_address_holding_thousands_of_connections_cannot_delay_another(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    """1,500 silent sockets, each replaced as soon as the server closes it, and 300 kept-alive
    connections asking /healthz every 3 s, all from one address, against the defaults: more
    than one worker's worker_connections. Another address is answered at once."""
    server = start_server(RATELIMIT_DEFAULT="1000 per minute")
    report = attack(server, client_context, keys, {"keepalive": 300, "silent": 1500}, 15, interval=1.0)
    print("\n".join(report.lines()))
    assert len(report.answers) >= 10, report.answers
    slow = [(status, took) for status, took in report.answers if status != 200 or took >= 2.0]
    assert not slow, slow
    # The cap did it: the attacker's connections beyond it were closed at once.
    assert sum(report.refused.values()) > 1000, report.refused
    logs = server.stop()
    assert logs.count("Connection cap reached: ip=127.0.0.2") == 1
    assert "Traceback" not in logs


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed or reset ``sock``, seen without reading it (Linux's TCP_INFO)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] in CLOSED_STATES


def test_connections_that_never_read_their_answers_are_cut_off(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    """5 connections pipeline 800 requests each and never read. The answers (the OpenAPI
    document, 21 KB) are more than the kernel's buffers take, so the server's writes wait: the
    write deadline (WRITE_TIMEOUT, 30 s) resets each connection. (Small answers would all fit
    in the buffers, and those connections end by the keepalive deadline instead.)"""
    server = start_server(OPENAPI_ENABLED="true", RATELIMIT_DEFAULT="100000 per minute")
    pipelined = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n" * 800
    readers = []
    for _ in range(5):
        tls = client_context.wrap_socket(connect_from(ATTACKER, server.port), server_hostname="localhost")
        tls.sendall(pipelined)
        readers.append(tls)
    started = time.monotonic()
    try:
        deadline = started + 45
        while not all(closed_by_server(tls) for tls in readers) and time.monotonic() < deadline:
            answer = hostile_clients.legitimate_request(
                hostile_clients.Target("127.0.0.1", server.port, client_context), keys.reader.secret, CLIENT
            )
            assert answer[0] == 200, answer
            time.sleep(1)
        took = time.monotonic() - started
        assert all(closed_by_server(tls) for tls in readers), f"still open after {took:.0f} s"
    finally:
        for tls in readers:
            tls.close()
    logs = server.stop()
    assert logs.count("cut off: an answer not taken in 30 s (WRITE_TIMEOUT)") == 5
    assert "Traceback" not in logs


def test_a_body_that_trickles_in_is_cut_off_with_408(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    """A client with a write key sends its headers, then its body a byte a second: the service
    answers 408 once the body deadline passes, instead of holding the connection."""
    server = start_server()
    head = (
        "POST /v1/items HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {keys.writer.secret}\r\nContent-Length: 1000\r\n\r\n"
    )
    raw = connect_from(CLIENT, server.port, timeout=30)
    with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(head.encode())
        started = time.monotonic()
        tls.setblocking(False)
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 25:
            # Read before each byte sent: a byte sent after the server answered and closed
            # draws a reset, and the kernel drops the unread answer with it.
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                tls.send(b" ")
                time.sleep(1)
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), (answer[:200], took, server.logs()[-2000:])
    assert b"application/problem+json" in answer
    assert 9 <= took < 15, took
