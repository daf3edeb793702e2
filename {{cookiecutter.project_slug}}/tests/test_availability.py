"""Availability while hostile clients hold connections open: hundreds of stalled TLS handshakes,
silent sockets and trickled headers, through a real gunicorn over TLS, do not keep a
legitimate client waiting (CWE-400, OWASP API4:2023)."""

from __future__ import annotations

import ssl
import statistics
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
