"""Keys sent in every place a client can put one, through a real gunicorn with its access log
and DEBUG logging on: no key, nor any 12-character piece of one, reaches stdout or stderr,
while the key ids, the request lines and the one traceback of a failed request do. And a client
that floods the log: no line over 1 KiB, no key, and a log reader that stops reading does not
stop the service."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.logging import MASK

from .database import Databases
from .support import PROJECT, KeySet, Server, free_port, run_gunicorn, server_env, wait_until_serving

pytestmark = pytest.mark.slow

FRAGMENT = 12
ACCESS_LOG = ("--access-logfile", "-")


def crashing_app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    """A WSGI app that fails outside Flask, so gunicorn logs "Error handling request <uri>"."""
    raise RuntimeError("the application failed outside Flask")


def fragments(secret: str) -> set[str]:
    """Every 12-character window of the key's random part (after ``<prefix>_``)."""
    body = secret[len(KEY_PREFIX) + 1 :]
    return {body[i : i + FRAGMENT] for i in range(len(body) - FRAGMENT + 1)}


def leaks(logs: str, secrets: Iterable[str]) -> list[str]:
    """The log lines that hold a key or a piece of one, for a readable failure."""
    pieces = {piece for secret in secrets for piece in fragments(secret)}
    return [line for line in logs.splitlines() if any(piece in line for piece in pieces)]


def percent_encoded(secret: str) -> str:
    return secret.replace("_", "%5F", 1)


@dataclass(frozen=True)
class Sent:
    """A request that reached the application, as its log lines should show it."""

    method: str
    path: str  # as logged (or how it starts): no query string, keys masked
    status: int
    request_id: str
    key_id: str | None


@dataclass
class Run:
    logs: str
    secrets: list[str]
    sent: list[Sent] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)


class Client:
    """One TLS connection per request, and raw bytes for requests gunicorn must reject."""

    def __init__(self, server: Server, context: ssl.SSLContext) -> None:
        self.server, self.context = server, context

    def send(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: str | bytes | None = None
    ) -> tuple[int, bytes, str]:
        """The status, the body and the request id the service gave the request."""
        connection = http.client.HTTPSConnection(
            "localhost", self.server.port, context=self.context, timeout=10
        )
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response.headers["X-Request-ID"]
        finally:
            connection.close()

    def raw(self, data: bytes) -> int:
        """Send bytes as they are; the status of the answer (0 if the connection was cut)."""
        with (
            socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as plain,
            self.context.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            sock.sendall(data)
            answer = b""
            try:
                while b"\r\n" not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except (ConnectionError, ssl.SSLError):
                pass
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        return int(match.group(1)) if match else 0


def environment(
    keys: KeySet, tls_files: tuple[Path, Path], database: dict[str, str], port: int, **overrides: str
) -> dict[str, str]:
    return {
        "APP_ENV": "test",
        "API_KEYS": keys.entries,
        **database,
        "BIND": f"127.0.0.1:{port}",
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
        "LOG_LEVEL": "DEBUG",
        **overrides,
    }


def start(
    keys: KeySet,
    tls_files: tuple[Path, Path],
    directory: Path,
    database: dict[str, str],
    *args: str,
    **overrides: str,
) -> Server:
    port = free_port()
    env = environment(keys, tls_files, database, port, **overrides)
    log_path = directory / "gunicorn.log"
    server = Server(port, run_gunicorn(env, log_path, *ACCESS_LOG, *args), log_path)
    wait_until_serving(server)
    return server


def send_everything(client: Client, keys: KeySet, run: Run, break_database: Callable[[], None]) -> None:
    reader, writer, ghost = keys.reader.secret, keys.writer.secret, keys.unconfigured.secret
    json_type = {"Content-Type": "application/json"}

    def app(
        name: str,
        method: str,
        target: str,
        logged_path: str,
        key_id: str | None,
        headers: dict[str, str],
        body: str | None = None,
    ) -> None:
        status, _, request_id = client.send(
            method, target, {"X-Request-ID": str(uuid.uuid4()), **headers}, body
        )
        run.statuses[name] = status
        run.sent.append(Sent(method, logged_path, status, request_id, key_id))

    # Headers
    app("bearer", "GET", "/v1/items", "/v1/items", "reader", {"Authorization": f"Bearer {reader}"})
    app("bearer-unconfigured", "GET", "/v1/items", "/v1/items", None, {"Authorization": f"Bearer {ghost}"})
    app("x-api-key", "GET", "/v1/whoami", "/v1/whoami", "writer", {"X-API-Key": writer})
    app(
        "both-headers-differ",
        "GET",
        "/v1/whoami",
        "/v1/whoami",
        None,
        {"Authorization": f"Bearer {reader}", "X-API-Key": writer},
    )
    app("other-scheme", "GET", "/v1/whoami", "/v1/whoami", None, {"Authorization": f"Token {reader}"})
    app("cookie", "GET", "/v1/whoami", "/v1/whoami", "reader", {"X-API-Key": reader, "Cookie": f"s={ghost}"})
    # The URL
    app("query-api-key", "GET", f"/v1/items?api_key={reader}", "/v1/items", None, {})
    app("query-access-token", "GET", f"/v1/items?access_token={writer}", "/v1/items", None, {})
    app("query-any-case", "GET", f"/v1/items?page=1&API-KEY={ghost}", "/v1/items", None, {})
    app("query-other", "GET", f"/v1/items?x={ghost}", "/v1/items", "reader", {"X-API-Key": reader})
    app("path", "GET", f"/v1/items/{ghost}", f"/v1/items/{MASK}", "reader", {"X-API-Key": reader})
    app(
        "path-percent-encoded",
        "GET",
        f"/v1/items/{percent_encoded(ghost)}",
        f"/v1/items/{MASK}",
        "reader",
        {"X-API-Key": reader},
    )
    # The body
    body = json.dumps({"name": ghost})
    app("json-body", "POST", "/v1/items", "/v1/items", "writer", {"X-API-Key": writer, **json_type}, body)
    broken = '{"name": "' + ghost
    app("broken-json", "POST", "/v1/items", "/v1/items", "writer", {"X-API-Key": writer, **json_type}, broken)
    form = {"X-API-Key": writer, "Content-Type": "application/x-www-form-urlencoded"}
    app("form-body", "POST", "/v1/items", "/v1/items", "writer", form, f"api_key={ghost}")
    # A key split in two by a character outside the key alphabet, in the path and the query.
    for split in ("/", "%20", "%2F", "%09", "+"):
        target = f"/v1/items/{ghost[:25]}{split}{ghost[25:]}?q={reader[:30]}{split}{reader[30:]}"
        app(f"split-{split}", "GET", target, "/v1/items/", "writer", {"X-API-Key": writer})
    # Credentials a client base64-encoded, in a well-formed header the application reads.
    basic = base64.b64encode(f"user:{ghost}".encode()).decode()
    app("basic", "GET", "/v1/whoami", "/v1/whoami", None, {"Authorization": f"Basic {basic}"})
    # Control characters that would start a forged line in a text log.
    forged = "/v1/items/x%0d%0a12:00:00%20INFO%20acme.audit:%20forged"
    app("crlf", "GET", forged, "/v1/items/x", "reader", {"X-API-Key": reader})
    # A key as the request id.
    run.statuses["request-id"], run.answers["request-id"], _ = client.send(
        "GET", "/v1/whoami", {"X-Request-ID": ghost}
    )

    # Requests gunicorn rejects itself, before the application sees them.
    rejected = {
        "long-url": b"GET /v1/items?api_key=" + reader.encode() + b"&pad=" + b"a" * 5000 + b" HTTP/1.1\r\n",
        "bad-request-line": f"GET /v1/items/{percent_encoded(ghost)}?api_key={ghost}\r\n".encode(),
        "bad-version": f"GET /v1/items?x={ghost} HTTP/{ghost}\r\n".encode(),
        "bad-method": f"{ghost} /v1/items HTTP/1.1\r\n".encode(),
        "header-without-colon": f"GET / HTTP/1.1\r\nHost: localhost\r\nX-API-Key {ghost}\r\n".encode(),
        "bad-header-name": f"GET / HTTP/1.1\r\nHost: localhost\r\nX({ghost}): 1\r\n".encode(),
        "split-by-space": f"GET /v1/items/{ghost[:25]} {ghost[25:]} HTTP/1.1\r\nHost: x\r\n".encode(),
        "split-by-tab": f"GET /v1/items/{ghost[:25]}\t{ghost[25:]} HTTP/1.1\r\nHost: x\r\n".encode(),
        "basic-without-colon": f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization Basic {basic}\r\n".encode(),
        "folded-header": (
            f"GET /v1/items HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {ghost[:25]}\r\n {ghost[25:]}\r\n"
        ).encode(),
        "header-too-long": (
            f"GET /v1/items HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {ghost}{'a' * 9000}\r\n"
        ).encode(),
    }
    for name, head in rejected.items():
        run.statuses[name] = client.raw(head + b"\r\n")
    # A body that gunicorn cannot parse while the application reads it.
    chunked = (
        "POST /v1/items HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {writer}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{ghost}\r\n\r\n"
    )
    run.statuses["bad-chunk"] = client.raw(chunked.encode())

    # A request that raises inside the application: its table has gone.
    break_database()
    app("fails", "GET", f"/v1/items?x={ghost}", "/v1/items", "reader", {"Authorization": f"Bearer {reader}"})


@pytest.fixture(scope="module")
def runs(
    keys: KeySet,
    tls_files: tuple[Path, Path],
    client_context: ssl.SSLContext,
    tmp_path_factory: pytest.TempPathFactory,
    databases: Databases,
) -> Callable[[str], Run]:
    """One server per APP_ENV, started on first use: every test of the module reads its logs."""
    done: dict[str, Run] = {}

    def run_in(app_env: str) -> Run:
        if app_env not in done:
            directory = tmp_path_factory.mktemp(f"leaks-{app_env}")
            database = databases.new()
            server = start(keys, tls_files, directory, database, APP_ENV=app_env)
            secrets = [keys.reader.secret, keys.writer.secret, keys.unconfigured.secret]
            done[app_env] = Run(logs="", secrets=secrets)
            client = Client(server, client_context)
            try:
                send_everything(client, keys, done[app_env], lambda: databases.drop_items(database))
            finally:
                done[app_env].logs = server.stop()
        return done[app_env]

    return run_in


@pytest.fixture(params=["test", "development"], ids=["json-lines", "text-lines"])
def run(request: pytest.FixtureRequest, runs: Callable[[str], Run]) -> Run:
    """Production writes JSON lines (as APP_ENV=test does), development readable text."""
    return runs(request.param)


def lines_with(logs: str, *needles: str) -> list[str]:
    return [line for line in logs.splitlines() if all(needle in line for needle in needles)]


def test_no_key_nor_any_12_character_piece_of_one_is_logged(run: Run) -> None:
    assert not leaks(run.logs, run.secrets)


def test_masked_values_show_the_fixed_marker(run: Run) -> None:
    assert MASK in run.logs
    assert lines_with(run.logs, "Invalid request from ip=", MASK)


def test_the_key_ids_are_logged(run: Run) -> None:
    assert lines_with(run.logs, "gunicorn.access", "key=reader")
    assert lines_with(run.logs, "gunicorn.access", "key=writer")
    assert re.search(r"key_id\W+reader\b", run.logs)
    assert re.search(r"key_id\W+writer\b", run.logs)


def test_every_request_is_logged_with_method_path_status_request_id_and_key_id(run: Run) -> None:
    """The app's request line (its path once, in its field) and gunicorn's access line (asked
    for here) both carry it all."""
    assert len(run.sent) >= 15
    for sent in run.sent:
        (request_line,) = lines_with(run.logs, "requestlog", sent.request_id)
        assert re.search(rf"\bmethod\W+{sent.method}\b", request_line), (sent, request_line)
        assert re.search(rf"\bpath\W+{re.escape(sent.path)}", request_line), (sent, request_line)
        assert request_line.count(sent.path) == 1, request_line
        access_lines = lines_with(run.logs, "gunicorn.access", f"rid={sent.request_id}")
        assert all(f"{sent.method} {sent.path}" in line for line in access_lines), (sent, access_lines)
        key_id = re.escape(sent.key_id) if sent.key_id else "(?:null|None|-)"
        for line in [request_line, *access_lines]:
            assert re.search(rf"(?<![\d.]){sent.status}(?![\d.])", line), (sent, line)
            assert re.search(r"duration_ms|\d+ms", line), (sent, line)
            assert re.search(rf"\bkey(?:_id)?\W+{key_id}(?![\w-])", line), (sent, line)
            assert "?" not in line, line


def test_the_access_log_format_omits_the_query_string(
    keys: KeySet, tls_files: tuple[Path, Path], database_env: dict[str, str]
) -> None:
    """As gunicorn resolves it for the servers above (its DEBUG dump of the configuration is
    one record, cut to a line like any other: --print-config shows it whole)."""
    env = environment(keys, tls_files, database_env, free_port())
    printed = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", *ACCESS_LOG],
        cwd=PROJECT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    resolved = re.search(r"^access_log_format\s+= (.*)$", printed, flags=re.MULTILINE)
    assert resolved, printed
    access_log_format = resolved.group(1)
    assert "%(U)s" in access_log_format
    for atom in ("%(r)s", "%(q)s", "%(f)s"):  # request line, query, Referer: all carry queries
        assert atom not in access_log_format
    assert not re.search(r"%\(\{[^}]*\}i\)s", access_log_format), "request headers carry keys"
    assert "x-request-id" in access_log_format
    assert "key_id" in access_log_format


def test_no_access_line_holds_a_query_string(run: Run) -> None:
    access_lines = lines_with(run.logs, "gunicorn.access")
    assert access_lines
    assert not [line for line in access_lines if "?" in line]


def test_the_failed_request_is_logged_once_with_a_traceback(run: Run) -> None:
    assert run.statuses["fails"] == 500
    assert run.logs.count("Exception on /v1/items [GET]") == 1
    assert "Error handling request" not in run.logs  # gunicorn did not log it again
    assert run.logs.count("Traceback (most recent call last)") == 1
    assert "in list_items" in run.logs  # the frames are kept, only secrets are masked


def test_requests_that_gunicorn_rejects_are_logged_masked(run: Run) -> None:
    for name in (
        "long-url",
        "bad-request-line",
        "bad-version",
        "bad-method",
        "header-without-colon",
        "bad-header-name",
        "folded-header",
        "header-too-long",
    ):
        assert 400 <= run.statuses[name] < 500, (name, run.statuses[name])
    assert len(lines_with(run.logs, "Invalid request from ip=")) >= 8
    assert lines_with(run.logs, "Invalid HTTP method", MASK)
    assert lines_with(run.logs, "Invalid HTTP request line", MASK)


def test_the_application_answered_as_the_contract_says(run: Run) -> None:
    expected = {
        "bearer": 200,
        "bearer-unconfigured": 401,
        "x-api-key": 200,
        "both-headers-differ": 401,
        "other-scheme": 401,
        "query-api-key": 400,
        "query-access-token": 400,
        "query-any-case": 400,
        "query-other": 200,
        "path": 404,
        "json-body": 201,
        "broken-json": 400,
        "form-body": 415,
        "request-id": 401,
    }
    assert {name: run.statuses[name] for name in expected} == expected


def test_a_key_sent_as_request_id_is_not_echoed(run: Run, keys: KeySet) -> None:
    assert run.statuses["request-id"] == 401
    assert keys.unconfigured.secret.encode() not in run.answers["request-id"]


def test_no_client_text_starts_a_line_of_its_own(runs: Callable[[str], Run]) -> None:
    """In the text log every line is a record (it starts with its time) or an indented
    continuation of one: the CR LF a client sent is shown escaped."""
    logs = runs("development").logs
    assert "forged" in logs
    for line in logs.splitlines():
        assert re.match(r"\d\d:\d\d:\d\d |    \| ", line), line
    assert "x\\r\\n12:00:00 INFO acme.audit: forged" in logs


def test_every_line_written_is_a_json_log_record(runs: Callable[[str], Run]) -> None:
    """Nothing is printed around the formatter, and so around the filter. The one plain line is
    the start's warning that APP_ENV=test, which these servers use, is for tests only; it holds
    nothing a client sent."""
    logs = runs("test").logs
    assert logs
    for line in logs.splitlines():
        if line.startswith("warning: APP_ENV: test "):
            continue
        assert isinstance(json.loads(line), dict), line


def test_gunicorn_error_lines_for_failed_requests_are_masked(
    keys: KeySet,
    tls_files: tuple[Path, Path],
    client_context: ssl.SSLContext,
    tmp_path: Path,
    database_env: dict[str, str],
) -> None:
    server = start(keys, tls_files, tmp_path, database_env, f"{__name__}:crashing_app")
    ghost = keys.unconfigured.secret
    client = Client(server, client_context)
    try:
        random_part = ghost[len(KEY_PREFIX) + 1 :]
        target = f"/v1/items/{percent_encoded(ghost)}?api_key={ghost}&token={random_part}&x={ghost}"
        status, _, _ = client.send(
            "GET", target, {"Authorization": f"Bearer {ghost}", "Cookie": f"s={ghost}"}
        )
    finally:
        logs = server.stop()
    assert status == 500
    assert lines_with(logs, "Error handling request", MASK)
    assert "the application failed outside Flask" in logs
    assert not leaks(logs, [ghost])


# A client that floods the log ----------------------------------------------------------------

ATTACKER, LEGITIMATE = "127.0.0.2", "127.0.0.3"
LINE_LIMIT = 1024
# gunicorn refuses a request line over 4,094 bytes: "GET " + path + " HTTP/1.1" must fit.
PATH_LENGTH = 4000


def crafted_paths(secrets: list[str]) -> list[str]:
    """4 KB paths that aim at the masking patterns, with keys at the start, across the point
    where a line is cut (1 KiB), split, percent-encoded and base64-encoded."""

    def padded(path: str, pad: str = "a") -> str:
        return (path + pad * PATH_LENGTH)[:PATH_LENGTH]

    paths = [
        "/%3F" + "key" * 1328,
        padded("/x", "&token"),
        padded("/x;", "apikey"),
        padded("/", "Ab1Cd2Ef3Gh-"),
    ]
    for secret in secrets:
        basic = base64.b64encode(f"user:{secret}".encode()).decode()
        paths += [
            padded(f"/{secret}/"),
            padded(f"/v1/items/{percent_encoded(secret)}/"),
            padded("/" + "/".join(secret[i : i + 10] for i in range(0, len(secret), 10)) + "/"),
            padded(f"/{basic}/"),
            *(padded("/" + "b" * offset + secret + "/") for offset in range(960, 1040, 9)),
        ]
    return paths


def keep_alive_requests(
    port: int, context: ssl.SSLContext, source: str, targets: Iterable[str], seconds: float = 120
) -> list[int]:
    """GET each target from ``source`` on one kept-alive connection (a new one whenever the
    server closes it); the statuses, 0 for a request that got no answer (and for every request
    after ``seconds``: a server that stopped answering fails the test, it does not hang it)."""
    deadline = time.monotonic() + seconds
    statuses = []
    connection: http.client.HTTPSConnection | None = None
    for target in targets:
        status = 0
        for _ in range(3):
            if time.monotonic() > deadline:
                break
            if connection is None:
                connection = http.client.HTTPSConnection(
                    "localhost", port, context=context, timeout=15, source_address=(source, 0)
                )
            try:
                connection.request("GET", target)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (http.client.HTTPException, OSError):
                connection.close()
                connection = None
                continue
            if response.will_close:
                connection.close()
                connection = None
            break
        statuses.append(status)
    if connection is not None:
        connection.close()
    return statuses


def flood(port: int, context: ssl.SSLContext, targets: list[str], connections: int = 4) -> list[int]:
    """The targets spread over a few connections from the attacker's address, all at once."""
    with ThreadPoolExecutor(connections) as pool:
        shares = pool.map(
            lambda share: keep_alive_requests(port, context, ATTACKER, targets[share::connections]),
            range(connections),
        )
        return [status for statuses in shares for status in statuses]


def invalid_header_name(port: int, context: ssl.SSLContext, secret: str) -> bytes:
    """An 8 KB header name gunicorn refuses and quotes in its error line: a key first, then text
    aimed at the query-parameter pattern."""
    name = (secret + "?" + "key" * 3000)[:8100]
    head = f"GET / HTTP/1.1\r\nHost: localhost\r\n{name}: 1\r\n\r\n".encode()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(head)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def long_lines(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if len(line.encode("utf-8", "backslashreplace")) > LINE_LIMIT]


@dataclass
class Flooded:
    logs: str
    statuses: list[int]
    header_answer: bytes


@pytest.fixture(scope="module")
def flooded(
    keys: KeySet,
    tls_files: tuple[Path, Path],
    client_context: ssl.SSLContext,
    tmp_path_factory: pytest.TempPathFactory,
    databases: Databases,
) -> Flooded:
    """1,500 unmatched requests with crafted 4 KB paths from one address, then an invalid 8 KB
    header name, against a gunicorn logging at DEBUG with its access log on: every line the
    service and gunicorn write."""
    directory = tmp_path_factory.mktemp("flood")
    server = start(keys, tls_files, directory, databases.new())
    paths = crafted_paths([keys.reader.secret, keys.unconfigured.secret])
    try:
        statuses = flood(server.port, client_context, [paths[n % len(paths)] for n in range(1500)])
        header_answer = invalid_header_name(server.port, client_context, keys.unconfigured.secret)
    finally:
        logs = server.stop()
    return Flooded(logs, statuses, header_answer)


def test_crafted_unmatched_paths_leave_every_line_within_1_kib_and_no_key(
    flooded: Flooded, keys: KeySet
) -> None:
    # 404, or 429 where a budget for unmatched routes stops the client: never no answer.
    assert set(flooded.statuses) <= {404, 429}, sorted(set(flooded.statuses))
    assert len(flooded.statuses) == 1500
    assert not long_lines(flooded.logs), long_lines(flooded.logs)[:1]
    assert not leaks(flooded.logs, [keys.reader.secret, keys.unconfigured.secret])
    request_lines = [json.loads(line) for line in lines_with(flooded.logs, "requestlog", ATTACKER)]
    assert len(request_lines) >= 1500
    assert all(entry["message"] == "request" and "[CUT " in entry["path"] for entry in request_lines)
    assert lines_with(flooded.logs, "gunicorn.access", "[CUT ")


def test_gunicorns_line_for_an_invalid_8_kb_header_name_is_cut_and_masked(
    flooded: Flooded, keys: KeySet
) -> None:
    assert flooded.header_answer.startswith(b"HTTP/1.1 400 ")
    (line,) = lines_with(flooded.logs, f"Invalid request from ip={ATTACKER}", "header name")
    assert len(line.encode()) <= LINE_LIMIT
    message = json.loads(line)["message"]
    assert MASK in message
    assert "[CUT " in message
    assert not leaks(line, [keys.unconfigured.secret])


# A log reader that stops reading ---------------------------------------------------------------

# The service's own configuration, with a queue of 500 lines instead of 10,000: hundreds of
# requests fill it, instead of ten thousand.
SMALL_QUEUE_CONFIG = """\
import runpy
globals().update(runpy.run_path({config!r}))
for handler in logconfig_dict["handlers"].values():
    handler["capacity"] = 500
"""


def healthz_delays(port: int, context: ssl.SSLContext, until: threading.Event) -> list[float]:
    """From the legitimate client's address, a fresh connection for GET /healthz every 0.2 s until
    ``until`` is set: how long each answer took (infinity for none)."""
    delays = []
    while not until.wait(0.2):
        started = time.monotonic()
        statuses = keep_alive_requests(port, context, LEGITIMATE, ["/healthz"], seconds=15)
        delays.append(time.monotonic() - started if statuses == [200] else float("inf"))
    return delays


def dropped_in_metrics(port: int, context: ssl.SSLContext, scraper: str) -> float:
    connection = http.client.HTTPSConnection(
        "localhost", port, context=context, timeout=15, source_address=(LEGITIMATE, 0)
    )
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {scraper}"})
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    (line,) = [line for line in text.splitlines() if line.startswith("api_log_lines_dropped_total ")]
    return float(line.split()[1])


def test_a_log_reader_that_stops_reading_does_not_stop_the_service(
    keys: KeySet,
    tls_files: tuple[Path, Path],
    client_context: ssl.SSLContext,
    tmp_path: Path,
    database_env: dict[str, str],
) -> None:
    """gunicorn's output is a pipe nobody reads (a stalled collector): writing to it would block
    the worker's event loop, and every client with it."""
    scraper = mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"], tenant="ops")
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(SMALL_QUEUE_CONFIG.format(config=str(PROJECT / "gunicorn.conf.py")))
    port = free_port()
    env = {
        "APP_ENV": "test",
        "API_KEYS": f"{keys.entries},{scraper.entry}",
        **database_env,
        "BIND": f"127.0.0.1:{port}",
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
        "LOG_LEVEL": "DEBUG",
    }
    reading, writing = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(config)],
        cwd=PROJECT,
        env=server_env(env),
        stdout=writing,
        stderr=writing,
    )
    os.close(writing)
    drained: list[bytes] = []
    reader = threading.Thread(target=lambda: drained.extend(iter(lambda: os.read(reading, 65536), b"")))
    try:
        wait_until_serving(Server(port, process, tmp_path / "unused.log"))
        done = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            legitimate = pool.submit(healthz_delays, port, client_context, done)
            paths = crafted_paths([keys.unconfigured.secret])
            statuses = flood(port, client_context, [paths[n % len(paths)] for n in range(1500)])
            time.sleep(1)
            done.set()
            delays = legitimate.result()
        dropped = dropped_in_metrics(port, client_context, scraper.secret)
        # The reader comes back: what was queued is written, and a notice of what was dropped.
        reader.start()
        keep_alive_requests(port, client_context, LEGITIMATE, ["/healthz"] * 3)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if reader.ident is not None:
        reader.join(30)
    os.close(reading)
    logs = b"".join(drained).decode("utf-8", "replace")
    assert set(statuses) <= {404, 429}, sorted(set(statuses))
    assert delays
    assert max(delays) < 5, delays
    assert dropped > 0
    notices = [json.loads(line) for line in lines_with(logs, "log lines dropped")]
    assert notices
    assert all(notice["dropped_lines"] > 0 for notice in notices)
    assert not long_lines(logs), long_lines(logs)[:1]
    assert not leaks(logs, [keys.unconfigured.secret])
