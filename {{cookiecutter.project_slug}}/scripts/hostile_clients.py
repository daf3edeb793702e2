"""Slow, stalled, hoarding and non-reading connections against a running service, with a
legitimate client beside them.

    python scripts/hostile_clients.py https://127.0.0.1:8443 --key KEY --cafile .dev/localhost.pem
        [--stalled 150] [--silent 100] [--trickle 50] [--keepalive 0] [--pipeline 0]
        [--seconds 20] [--source 127.0.0.2] [--client-source 127.0.0.3]

Kinds of hostile connection:

* stalled: the first bytes of a ClientHello, then nothing;
* silent: connects and sends nothing;
* trickle: completes the handshake, then sends its request headers one byte a second;
* keepalive: a kept-alive connection asking ``GET /healthz`` every 3 s, to hold its slot;
* pipeline: sends 800 requests at once and never reads an answer.

Each one the server closes is replaced at once, and one it refuses is tried again at once, as an
attacker would. The attack runs in a process of its own, from ``--source`` when given; meanwhile
a legitimate client, from ``--client-source``, sends a request on a fresh connection every 0.2 s.
Prints what both saw; exits 1 when a legitimate request was not answered 200 within a second.
On one machine, give the two their own loopback addresses (127.0.0.2 and 127.0.0.3): the service
counts connections per address, so an attacker and a client on one address share one cap.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import selectors
import socket
import ssl
import statistics
import struct
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

# A TLS record header and the start of a ClientHello: enough to make a server begin the
# handshake and wait for the rest.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"
PARTIAL_REQUEST_LINE = b"GET /v1/who"
TRICKLED = b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 4096
HEALTH_CHECK = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
KEEPALIVE_EVERY = 3.0
PIPELINED = 800
PROMPT_SECONDS = 1.0
# A connection the server closed this soon, before answering anything, was refused at once.
REFUSED_WITHIN = 0.5
# Linux's TCP states, as TCP_INFO reports them: the server sent FIN, or reset the connection.
TCP_CLOSED_STATES = (7, 8)  # TCP_CLOSE, TCP_CLOSE_WAIT
TLS_KINDS = ("trickle", "keepalive", "pipeline")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    context: ssl.SSLContext | None  # None: plain HTTP

    @classmethod
    def from_url(cls, url: str, cafile: str | None) -> Target:
        parts = urlsplit(url)
        context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
        return cls(parts.hostname or "127.0.0.1", parts.port or 443, context)


def attacker_context() -> ssl.SSLContext:
    """The attacker's own TLS client: it checks no certificate, and shares no OpenSSL state with
    the legitimate client's context across the fork that starts the attack."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Hostile:
    """One hostile connection: its kind, its socket, when it opened, what it sent so far."""

    kind: str
    sock: socket.socket
    opened: float
    sent: int = 0
    answered: bool = False
    next_request: float = 0.0


@dataclass
class Report:
    seconds: float
    held: int
    opened: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    lifetimes: dict[str, list[float]] = field(default_factory=dict)
    answers: list[tuple[int | str, float]] = field(default_factory=list)

    @property
    def failures(self) -> list[tuple[int | str, float]]:
        return [(status, took) for status, took in self.answers if status != 200 or took > PROMPT_SECONDS]

    def latency(self) -> tuple[float, float, float]:
        """The legitimate client's p50, p99 and slowest, in milliseconds."""
        took = sorted(seconds * 1000 for _, seconds in self.answers) or [0.0]
        quantile = statistics.quantiles(took, n=100, method="inclusive") if len(took) > 1 else took * 99
        return statistics.median(took), quantile[98], took[-1]

    def lines(self) -> list[str]:
        p50, p99, slowest = self.latency()
        lines = [
            f"hostile connections kept up at once: {self.held} (each closed one replaced, each refused one "
            f"retried), for {self.seconds:.0f} s",
            f"hostile connections opened: {sum(self.opened.values())} ({dict(self.opened)})",
        ]
        if self.refused:
            lines.append(
                f"hostile connections refused at once (closed within {REFUSED_WITHIN} s, unanswered): "
                f"{sum(self.refused.values())} ({dict(self.refused)})"
            )
        for kind, lifetimes in sorted(self.lifetimes.items()):
            lines.append(
                f"  {kind}: {len(lifetimes)} closed by the server, after {statistics.median(lifetimes):.1f} s"
                f" (median; longest {max(lifetimes):.1f} s)"
            )
        lines += [
            f"legitimate requests: {len(self.answers)}, not 200 within {PROMPT_SECONDS:.0f} s: "
            f"{len(self.failures)}",
            f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {slowest:.1f} ms",
        ]
        return lines


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed or reset ``sock``, without reading it (Linux's TCP_INFO)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] in TCP_CLOSED_STATES
    except OSError:
        return True


class Attack:
    """Holds ``counts`` hostile connections of each kind until stopped, replacing closed ones."""

    def __init__(self, target: Target, counts: dict[str, int], source: str | None = None) -> None:
        self.target, self.counts, self.source = target, counts, source
        self.context = None if target.context is None else attacker_context()
        self.selector = selectors.DefaultSelector()
        self.report = Report(seconds=0.0, held=sum(counts.values()))
        self.pending: deque[str] = deque()
        self.unread: dict[socket.socket, Hostile] = {}

    def _open(self, kind: str) -> None:
        started = time.monotonic()
        try:
            sock = self._connect(kind)
            if kind == "stalled":
                sock.sendall(PARTIAL_REQUEST_LINE if self.target.context is None else PARTIAL_CLIENT_HELLO)
            elif kind == "pipeline":
                sock.sendall(HEALTH_CHECK * PIPELINED)
        except OSError:
            # Refused (closed during the handshake) or not taken at all: try again, at once.
            if time.monotonic() - started < REFUSED_WITHIN:
                self.report.refused[kind] += 1
            self.pending.append(kind)
            return
        sock.setblocking(False)
        hostile = Hostile(kind, sock, time.monotonic(), next_request=time.monotonic())
        if kind == "pipeline":
            self.unread[sock] = hostile  # never read: watched through TCP_INFO instead
        else:
            self.selector.register(sock, selectors.EVENT_READ, hostile)
        self.report.opened[kind] += 1

    def _connect(self, kind: str) -> socket.socket:
        source = None if self.source is None else (self.source, 0)
        sock = socket.create_connection(
            (self.target.host, self.target.port), timeout=5, source_address=source
        )
        if kind not in TLS_KINDS or self.context is None:
            return sock
        try:
            return self.context.wrap_socket(sock, server_hostname=self.target.host)
        except OSError:
            sock.close()
            raise

    def _closed_by_server(self, hostile: Hostile) -> bool:
        try:
            while hostile.sock.recv(65536):
                hostile.answered = True
                if hostile.kind != "keepalive":
                    return False
            return True
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True

    def _replace(self, hostile: Hostile) -> None:
        if hostile.kind == "pipeline":
            del self.unread[hostile.sock]
        else:
            self.selector.unregister(hostile.sock)
        hostile.sock.close()
        lifetime = time.monotonic() - hostile.opened
        if lifetime < REFUSED_WITHIN and not hostile.answered:
            self.report.refused[hostile.kind] += 1
        else:
            self.report.lifetimes.setdefault(hostile.kind, []).append(lifetime)
        self.pending.append(hostile.kind)

    def _write(self, now: float) -> None:
        for key in list(self.selector.get_map().values()):
            hostile: Hostile = key.data
            if hostile.kind == "trickle" and hostile.sent < len(TRICKLED) and now >= hostile.next_request:
                data, hostile.next_request = TRICKLED[hostile.sent : hostile.sent + 1], now + 1.0
            elif hostile.kind == "keepalive" and now >= hostile.next_request:
                data, hostile.next_request = HEALTH_CHECK, now + KEEPALIVE_EVERY
            else:
                continue
            try:
                hostile.sent += hostile.sock.send(data)
            except (ssl.SSLWantWriteError, BlockingIOError):
                continue
            except OSError:
                self._replace(hostile)

    def hold(self, seconds: float) -> Report:
        """Open every connection, then hold them for ``seconds``."""
        began = time.monotonic()
        for kind, count in self.counts.items():
            self.pending.extend([kind] * count)
        while time.monotonic() - began < seconds:
            for _ in range(len(self.pending)):
                self._open(self.pending.popleft())
            for key, _ in self.selector.select(timeout=0.05 if self.pending else 0.2):
                if self._closed_by_server(key.data):
                    self._replace(key.data)
            for hostile in [h for h in self.unread.values() if _closed(h.sock)]:
                self._replace(hostile)
            self._write(time.monotonic())
        self.report.seconds = time.monotonic() - began
        return self.report

    def close(self) -> None:
        for hostile in [key.data for key in self.selector.get_map().values()] + list(self.unread.values()):
            # A reset, not a FIN: the server learns at once that these are gone.
            hostile.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            hostile.sock.close()
        self.selector.close()


def _attack(
    target: Target, counts: dict[str, int], source: str | None, seconds: float, pipe: Connection
) -> None:
    attack = Attack(target, counts, source)
    try:
        report = attack.hold(seconds)
    finally:
        attack.close()
    pipe.send(report)


def legitimate_request(target: Target, key: str, source: str | None = None) -> tuple[int | str, float]:
    """A request on a fresh connection from ``source``: its status (or error) and how long it took."""
    connection: http.client.HTTPConnection
    address = None if source is None else (source, 0)
    if target.context is None:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=5, source_address=address)
    else:
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=5, source_address=address, context=target.context
        )
    started = time.monotonic()
    try:
        connection.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, time.monotonic() - started
    finally:
        connection.close()


def run(
    target: Target,
    key: str,
    counts: dict[str, int],
    seconds: float,
    interval: float = 0.2,
    source: str | None = None,
    client_source: str | None = None,
    warmup: float = 2.0,
) -> Report:
    """The attack for ``seconds`` after ``warmup`` seconds to open its connections, from
    ``source``; a legitimate request every ``interval`` seconds meanwhile, from ``client_source``.

    The attack runs in a process of its own, so that its work does not slow the legitimate
    client's measurements (as a thread would, through the interpreter lock).
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    attacker = context.Process(target=_attack, args=(target, counts, source, warmup + seconds, sender))
    attacker.start()
    answers = []
    try:
        time.sleep(warmup)
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            answers.append(legitimate_request(target, key, client_source))
            time.sleep(interval)
        report: Report = receiver.recv() if receiver.poll(warmup + seconds + 30) else Report(0.0, 0)
    finally:
        attacker.join(timeout=10)
        if attacker.is_alive():
            attacker.kill()
    report.answers = answers
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("url", help="the service, e.g. https://127.0.0.1:8443")
    parser.add_argument("--key", required=True, help="a valid key, for the legitimate client")
    parser.add_argument("--cafile", help="the CA that signed the service's certificate")
    parser.add_argument("--stalled", type=int, default=150, help="connections stalled in the handshake")
    parser.add_argument("--silent", type=int, default=100, help="connections that send nothing")
    parser.add_argument("--trickle", type=int, default=50, help="clients trickling their headers")
    parser.add_argument("--keepalive", type=int, default=0, help="kept-alive connections asking every 3 s")
    parser.add_argument(
        "--pipeline", type=int, default=0, help=f"connections sending {PIPELINED} requests unread"
    )
    parser.add_argument("--seconds", type=float, default=20, help="how long to hold them")
    parser.add_argument("--source", help="the attacker's source address, e.g. 127.0.0.2")
    parser.add_argument("--client-source", help="the legitimate client's source address, e.g. 127.0.0.3")
    args = parser.parse_args()
    kinds = ("stalled", "silent", "trickle", "keepalive", "pipeline")
    counts = {kind: getattr(args, kind) for kind in kinds if getattr(args, kind)}
    target = Target.from_url(args.url, args.cafile)
    report = run(target, args.key, counts, args.seconds, source=args.source, client_source=args.client_source)
    print("\n".join(report.lines()))
    return 1 if report.failures or not report.answers else 0


if __name__ == "__main__":
    sys.exit(main())
