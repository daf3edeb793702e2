"""Availability while hostile clients hold connections open: hundreds of stalled TLS handshakes,
silent sockets and trickled headers, through a real gunicorn over TLS, do not keep a
legitimate client waiting (CWE-400, OWASP API4:2023)."""

from __future__ import annotations

import socket
import ssl
import statistics
import time
from collections.abc import Callable

import pytest

from .support import KeySet, RedisServer, Server, script

pytestmark = pytest.mark.slow

hostile_clients = script("hostile_clients")

# At least 300 connections, held (each one the server closes is replaced) for at least 20 s.
HOSTILE = {"stalled": 150, "silent": 100, "trickle": 50}
SECONDS = 20
# gunicorn.conf.py's keepalive: the deadline for a request's handshake, request line and headers.
KEEPALIVE = 5


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


def attack(server: Server, context: ssl.SSLContext, keys: KeySet):
    target = hostile_clients.Target("127.0.0.1", server.port, context)
    return hostile_clients.run(target, keys.reader.secret, HOSTILE, SECONDS)


def test_stalled_silent_and_trickling_connections_do_not_delay_a_legitimate_client(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    server = start_server()
    assert_available(attack(server, client_context, keys))


def test_the_same_with_two_workers_sharing_limits_in_redis(
    start_server: Callable[..., Server],
    redis_server: RedisServer,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    server = start_server("--workers", "2", RATELIMIT_STORAGE_URI=redis_server.uri)
    assert_available(attack(server, client_context, keys))


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
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
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
