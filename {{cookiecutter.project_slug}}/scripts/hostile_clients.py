"""Slow and stalled connections against a running service, with a legitimate client beside them.

    python scripts/hostile_clients.py https://127.0.0.1:8443 --key KEY --cafile .dev/localhost.pem
        [--stalled 150] [--silent 100] [--trickle 50] [--seconds 20]

Holds connections that stall in the TLS handshake (the first bytes of a ClientHello, then
nothing), connections that send nothing, and clients that trickle their request headers one
byte a second; each one the server closes is replaced at once, as an attacker would. Meanwhile
a legitimate client sends a request on a fresh connection every 0.2 s. Prints what both saw;
exits 1 when a legitimate request was not answered 200 within a second.
"""

from __future__ import annotations

import argparse
import http.client
import selectors
import socket
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# A TLS record header and the start of a ClientHello: enough to make a server begin the
# handshake and wait for the rest.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"
PARTIAL_REQUEST_LINE = b"GET /v1/who"
TRICKLED = b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 4096
PROMPT_SECONDS = 1.0


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


@dataclass
class Hostile:
    """One hostile connection: its kind, its socket, when it opened, what it sent so far."""

    kind: str
    sock: socket.socket
    opened: float
    sent: int = 0


@dataclass
class Report:
    seconds: float
    held: int
    opened: Counter[str] = field(default_factory=Counter)
    unopened: Counter[str] = field(default_factory=Counter)
    lifetimes: dict[str, list[float]] = field(default_factory=dict)
    answers: list[tuple[int | str, float]] = field(default_factory=list)

    @property
    def failures(self) -> list[tuple[int | str, float]]:
        return [(status, took) for status, took in self.answers if status != 200 or took > PROMPT_SECONDS]

    def lines(self) -> list[str]:
        took = sorted(seconds * 1000 for _, seconds in self.answers)
        quantile = statistics.quantiles(took, n=100, method="inclusive") if len(took) > 1 else took * 99
        lines = [
            f"hostile connections held at once: {self.held}, for {self.seconds:.0f} s",
            f"hostile connections opened: {sum(self.opened.values())} ({dict(self.opened)})",
        ]
        if self.unopened:
            lines.append(f"hostile connections the server did not take: {dict(self.unopened)}")
        for kind, lifetimes in sorted(self.lifetimes.items()):
            lines.append(
                f"  {kind}: {len(lifetimes)} closed by the server, after {statistics.median(lifetimes):.1f} s"
                f" (median; longest {max(lifetimes):.1f} s)"
            )
        lines += [
            f"legitimate requests: {len(self.answers)}, not 200 within {PROMPT_SECONDS:.0f} s: "
            f"{len(self.failures)}",
            f"  latency p50 {statistics.median(took):.1f} ms, p99 {quantile[98]:.1f} ms,"
            f" max {max(took):.1f} ms",
        ]
        return lines


class Attack:
    """Holds ``counts`` hostile connections of each kind until stopped, replacing closed ones."""

    def __init__(self, target: Target, counts: dict[str, int]) -> None:
        self.target, self.counts = target, counts
        self.selector = selectors.DefaultSelector()
        self.report = Report(seconds=0.0, held=sum(counts.values()))
        self.running = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, kind: str) -> None:
        try:
            sock = socket.create_connection((self.target.host, self.target.port), timeout=5)
            if kind == "trickle" and self.target.context is not None:
                sock = self.target.context.wrap_socket(sock, server_hostname=self.target.host)
            elif kind == "stalled":
                sock.sendall(PARTIAL_REQUEST_LINE if self.target.context is None else PARTIAL_CLIENT_HELLO)
        except OSError:  # a server that no longer answers cannot be attacked further
            self.report.unopened[kind] += 1
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, Hostile(kind, sock, time.monotonic()))
        self.report.opened[kind] += 1

    def _closed_by_server(self, hostile: Hostile) -> bool:
        try:
            return hostile.sock.recv(1024) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True

    def _replace(self, hostile: Hostile) -> None:
        self.selector.unregister(hostile.sock)
        hostile.sock.close()
        self.report.lifetimes.setdefault(hostile.kind, []).append(time.monotonic() - hostile.opened)
        if self.running:
            self._open(hostile.kind)

    def _trickle(self) -> None:
        for key in list(self.selector.get_map().values()):
            hostile: Hostile = key.data
            if hostile.kind == "trickle" and hostile.sent < len(TRICKLED):
                try:
                    hostile.sent += hostile.sock.send(TRICKLED[hostile.sent : hostile.sent + 1])
                except (ssl.SSLWantWriteError, BlockingIOError):
                    continue
                except OSError:
                    self._replace(hostile)

    def _run(self) -> None:
        next_byte = time.monotonic()
        while self.running:
            for key, _ in self.selector.select(timeout=0.2):
                if self._closed_by_server(key.data):
                    self._replace(key.data)
            if time.monotonic() >= next_byte:
                self._trickle()
                next_byte += 1.0

    def start(self) -> None:
        self.running = True
        for kind, count in self.counts.items():
            for _ in range(count):
                self._open(kind)
        self.thread.start()

    def stop(self) -> Report:
        self.running = False
        self.thread.join(timeout=10)
        for key in list(self.selector.get_map().values()):
            key.data.sock.close()
        self.selector.close()
        return self.report


def legitimate_request(target: Target, key: str) -> tuple[int | str, float]:
    """A request on a fresh connection: its status (or error) and how long it took."""
    connection: http.client.HTTPConnection
    if target.context is None:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=5)
    else:
        connection = http.client.HTTPSConnection(target.host, target.port, timeout=5, context=target.context)
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


def run(target: Target, key: str, counts: dict[str, int], seconds: float, interval: float = 0.2) -> Report:
    """The attack for ``seconds``, a legitimate request every ``interval`` seconds meanwhile."""
    attack = Attack(target, counts)
    attack.start()
    answers = []
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            answers.append(legitimate_request(target, key))
            time.sleep(interval)
    finally:
        report = attack.stop()
    report.seconds = time.monotonic() - began
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
    parser.add_argument("--seconds", type=float, default=20, help="how long to hold them")
    args = parser.parse_args()
    counts = {"stalled": args.stalled, "silent": args.silent, "trickle": args.trickle}
    report = run(Target.from_url(args.url, args.cafile), args.key, counts, args.seconds)
    print("\n".join(report.lines()))
    return 1 if report.failures or not report.answers else 0


if __name__ == "__main__":
    sys.exit(main())
