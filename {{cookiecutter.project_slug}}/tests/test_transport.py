"""Transport through a real gunicorn: TLS versions and ciphers, fail-fast configuration, security
headers on every kind of response, trusted proxies, and no redirects.

Each refusal test first proves that this machine's client can offer what the server must refuse
(against a permissive in-process TLS server with the same certificate), so a server that
accepted it would fail the test instead of passing it by accident; if the local OpenSSL cannot
offer it at all, the test is skipped and says why.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from {{ cookiecutter.package_name }}.errors import DETAILS

from .database import Databases
from .support import KeySet, Server, bearer, free_port, raw_exchange, run_gunicorn, wait_until_serving

pytestmark = pytest.mark.slow

ONE_YEAR = 365 * 24 * 60 * 60
CSP = "default-src 'none'; frame-ancestors 'none'"
PROBLEM_JSON = "application/problem+json"
REDIRECTS = (301, 302, 303, 307, 308)

Response = tuple[int, http.client.HTTPMessage, bytes]


# --- helpers -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TlsServer:
    """The shared TLS gunicorn: an RSA certificate (so RSA key exchange and ECDHE-RSA suites
    can be offered at all), a tiny default limit, and an items database of its own."""

    server: Server
    cert: Path
    key: Path
    database: dict[str, str]

    @property
    def port(self) -> int:
        return self.server.port


def launch(settings: dict[str, str], log_path: Path, tls: bool) -> Server:
    port = free_port()
    process = run_gunicorn({**settings, "BIND": f"127.0.0.1:{port}"}, log_path)
    server = Server(port, process, log_path, "https" if tls else "http")
    try:
        wait_until_serving(server)
    except RuntimeError:
        server.stop()
        raise
    return server


def request(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One request on a fresh connection to 127.0.0.1 (HTTPS when ``context`` is given)."""
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def tls_client(
    version: ssl.TLSVersion, ca: trustme.CA, ciphers: str | None = None, weak: bool = False
) -> ssl.SSLContext:
    """A client that offers exactly ``version`` (and ``ciphers``, for TLS 1.2 and below)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    with warnings.catch_warnings():
        # Setting TLS 1.0/1.1 is deprecated in Python: here it is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    if weak:
        # SECLEVEL=0 lets OpenSSL 3 offer old protocols and suites it would otherwise drop.
        context.set_ciphers(f"{ciphers or 'ALL'}:@SECLEVEL=0")
    elif ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Complete a TLS handshake with 127.0.0.1:port; the negotiated version and cipher."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


def client_can_offer(context: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """True when ``context`` completes a handshake with a server that accepts anything."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(cert, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            with permissive.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        handshake(listener.getsockname()[1], context)
    except OSError:
        return False
    finally:
        thread.join(timeout=5)
        listener.close()
    return True


def assert_security_headers(headers: http.client.HTTPMessage) -> None:
    hsts = headers.get("Strict-Transport-Security", "")
    max_age = re.search(r"max-age=(\d+)", hsts)
    assert max_age is not None, f"no HSTS max-age in {hsts!r}"
    assert int(max_age.group(1)) >= ONE_YEAR
    assert "includesubdomains" in hsts.lower()
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert headers.get("Content-Security-Policy") == CSP
    assert headers.get("Referrer-Policy") == "no-referrer"
    assert headers.get("X-Frame-Options") == "DENY"
    assert headers.get("Cache-Control") == "no-store"


def assert_problem(status: int, headers: http.client.HTTPMessage, body: bytes, expected: int) -> None:
    assert status == expected
    assert headers.get_content_type() == PROBLEM_JSON
    problem = json.loads(body)
    assert problem["status"] == expected
    assert problem["type"]
    assert problem["title"]


# --- servers shared by a group of tests -----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    keys: KeySet, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory, databases: Databases
) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("transport-tls")
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    database = databases.new()
    settings = {
        "APP_ENV": "test",
        "API_KEYS": keys.entries,
        **database,
        "TLS_CERT_FILE": str(cert),
        "TLS_KEY_FILE": str(key),
        "RATELIMIT_DEFAULT": "2 per minute",
    }
    server = launch(settings, directory / "gunicorn.log", tls=True)
    yield TlsServer(server, cert, key, database)
    server.stop()


def proxied_server(
    keys: KeySet, directory: Path, database: dict[str, str], proxies: str, app_env: str
) -> Server:
    settings = {
        "APP_ENV": app_env,
        "API_KEYS": keys.entries,
        **database,
        "FORWARDED_ALLOW_IPS": proxies,
        "RATELIMIT_DEFAULT": "2 per minute",
        "RATELIMIT_AUTH_FAILURES": "2 per minute",
    }
    return launch(settings, directory / "gunicorn.log", tls=False)


@pytest.fixture(scope="module")
def behind_trusted_proxy(
    keys: KeySet, tmp_path_factory: pytest.TempPathFactory, databases: Databases
) -> Iterator[Server]:
    """Plain HTTP in production, trusting 127.0.0.1 (the test client) as the TLS proxy."""
    directory = tmp_path_factory.mktemp("trusted-proxy")
    server = proxied_server(keys, directory, databases.new(), "127.0.0.1", "production")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def behind_other_proxy(
    keys: KeySet, tmp_path_factory: pytest.TempPathFactory, databases: Databases
) -> Iterator[Server]:
    """Plain HTTP trusting only 10.255.255.1: the test client is NOT a trusted proxy."""
    directory = tmp_path_factory.mktemp("other-proxy")
    server = proxied_server(keys, directory, databases.new(), "10.255.255.1", "test")
    yield server
    server.stop()


# --- 1. TLS versions and ciphers -----------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["1.3", "1.2"])
def test_tls_handshake_succeeds_with_tls_1_2_and_1_3(
    tls_server: TlsServer, ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    context = tls_client(version, ca)
    negotiated, _ = handshake(tls_server.port, context)
    assert negotiated == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
    status, _, body = request(tls_server.port, "/healthz", context=context)
    assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize("version", ["TLSv1_1", "TLSv1"], ids=["1.1", "1.0"])
def test_tls_1_1_and_1_0_handshakes_are_refused(tls_server: TlsServer, ca: trustme.CA, version: str) -> None:
    context = tls_client(ssl.TLSVersion[version], ca, weak=True)
    if not client_can_offer(context, tls_server.cert, tls_server.key):
        pytest.skip(f"this machine's OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer {version} at all")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(tls_server.port, context)


def tls12_suites() -> dict[str, dict[str, object]]:
    """Every suite this machine's client can offer in TLS 1.2: all of OpenSSL's, NULL ciphers
    included, but those that exist only in TLS 1.3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {suite["name"]: suite for suite in context.get_ciphers() if suite["protocol"] != "TLSv1.3"}


def forward_secret_aead(suite: dict[str, object]) -> bool:
    return bool(suite["aead"]) and suite["kea"] in ("kx-ecdhe", "kx-dhe")


@pytest.mark.parametrize("certificate", ["rsa", "ecdsa"])
def test_tls_1_2_negotiates_no_suite_without_forward_secrecy_and_aead(
    request: pytest.FixtureRequest, ca: trustme.CA, certificate: str
) -> None:
    """The client's whole TLS 1.2 list, one suite per handshake, against a server with each kind
    of certificate (a suite names the kind it needs). A suite added to the server's list that
    lacks forward secrecy or AEAD (ECDHE-RSA-AES256-SHA, say) is negotiated, and fails this."""
    if certificate == "rsa":
        shared: TlsServer = request.getfixturevalue("tls_server")
        port, cert, key = shared.port, shared.cert, shared.key
    else:  # the session's certificate: trustme's default, ECDSA
        cert, key = request.getfixturevalue("tls_files")
        port = request.getfixturevalue("start_server")().port
    suites = tls12_suites()
    weak = [name for name, suite in suites.items() if not forward_secret_aead(suite)]
    # Proof that the refusals below mean something: this client can negotiate a weak suite.
    if not client_can_offer(tls_client(ssl.TLSVersion.TLSv1_2, ca, ":".join(weak), weak=True), cert, key):
        pytest.skip(f"this machine's OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer a weak TLS 1.2 suite")
    negotiated = []
    for name in suites:
        try:
            negotiated.append(handshake(port, tls_client(ssl.TLSVersion.TLSv1_2, ca, name, weak=True)))
        except (ssl.SSLError, ConnectionError):
            continue
    assert negotiated, "no TLS 1.2 suite was negotiated at all"
    assert {version for version, _ in negotiated} == {"TLSv1.2"}
    accepted = [cipher for _, cipher in negotiated if cipher is not None]
    assert [cipher for cipher in accepted if not forward_secret_aead(suites[cipher])] == []


@pytest.mark.parametrize(
    "cipher", ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
)
def test_tls_1_2_accepts_forward_secret_aead_ciphers(
    tls_server: TlsServer, ca: trustme.CA, cipher: str
) -> None:
    context = tls_client(ssl.TLSVersion.TLSv1_2, ca, ciphers=cipher)
    assert handshake(tls_server.port, context) == ("TLSv1.2", cipher)


# --- 2. Plain HTTP on the TLS port -------------------------------------------------------------


def test_plain_http_on_the_tls_port_gets_no_application_answer(
    tls_server: TlsServer, client_context: ssl.SSLContext, keys: KeySet
) -> None:
    received = b""
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {keys.other_tenant.secret}\r\n\r\n".encode()
        )
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
    assert not received.startswith(b"HTTP/1.1 2"), received[:200]
    assert b"json" not in received.lower()
    assert b"key_id" not in received
    # The server is still there for TLS clients afterwards.
    status, _, _ = request(tls_server.port, "/healthz", context=client_context)
    assert status == 200


# --- 3. Fail fast ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
    env: dict[str, str]
    keys: KeySet
    cert: Path
    key: Path
    other_key: Path
    missing: Path


def _without_api_keys(given: Inputs) -> dict[str, str]:
    return {name: value for name, value in given.env.items() if name != "API_KEYS"}


def _raw_key(given: Inputs) -> dict[str, str]:
    return {**given.env, "API_KEYS": given.keys.reader.secret}


def _raw_key_among_entries(given: Inputs) -> dict[str, str]:
    return {**given.env, "API_KEYS": f"{given.keys.entries},{given.keys.writer.secret}"}


def _unreadable_cert(given: Inputs) -> dict[str, str]:
    return {**given.env, "TLS_CERT_FILE": str(given.missing), "TLS_KEY_FILE": str(given.key)}


def _mismatched_key(given: Inputs) -> dict[str, str]:
    return {**given.env, "TLS_CERT_FILE": str(given.cert), "TLS_KEY_FILE": str(given.other_key)}


def _production_without_tls_or_proxy(given: Inputs) -> dict[str, str]:
    return {**given.env, "APP_ENV": "production"}


def _invalid_limit(given: Inputs) -> dict[str, str]:
    return {**given.env, "RATELIMIT_DEFAULT": "plenty per fortnight"}


def _zero_window(given: Inputs) -> dict[str, str]:
    return {**given.env, "RATELIMIT_DEFAULT": "1 per 0 second"}


def _memory_limits_with_two_workers(given: Inputs) -> dict[str, str]:
    return {
        **given.env,
        "APP_ENV": "production",
        "TLS_CERT_FILE": str(given.cert),
        "TLS_KEY_FILE": str(given.key),
        "RATELIMIT_STORAGE_URI": "memory://",
        "WEB_CONCURRENCY": "2",
    }


def _no_header_deadline(given: Inputs) -> dict[str, str]:
    return {**given.env, "GUNICORN_CMD_ARGS": "--keep-alive 0"}


def _tls_with_the_stock_gevent_worker(given: Inputs) -> dict[str, str]:
    tls = {"TLS_CERT_FILE": str(given.cert), "TLS_KEY_FILE": str(given.key)}
    return {**given.env, **tls, "GUNICORN_CMD_ARGS": "--worker-class gevent"}


def _trust_every_address(given: Inputs) -> dict[str, str]:
    return {**given.env, "FORWARDED_ALLOW_IPS": "10.0.0.5, 0.0.0.0/0"}


def _trust_every_ipv6_address(given: Inputs) -> dict[str, str]:
    return {**given.env, "FORWARDED_ALLOW_IPS": "::/0"}


def _key_as_unknown_field(given: Inputs) -> dict[str, str]:
    return {**given.env, "API_KEYS": f"{given.keys.reader.entry};{given.keys.unconfigured.secret}=x"}


def _key_as_id(given: Inputs) -> dict[str, str]:
    entry = given.keys.writer.entry.replace("id=writer", f"id={given.keys.unconfigured.secret}")
    return {**given.env, "API_KEYS": f"{given.keys.reader.entry},{entry}"}


def _storage_password_with_a_hash(given: Inputs) -> dict[str, str]:
    secret = given.keys.unconfigured.secret
    return {**given.env, "RATELIMIT_STORAGE_URI": f"redis://:{secret}#x@localhost:6379/0"}


@pytest.mark.parametrize(
    ("variable", "configure"),
    [
        pytest.param("API_KEYS", _without_api_keys, id="missing-API_KEYS"),
        pytest.param("API_KEYS", _key_as_unknown_field, id="key-as-a-field-name"),
        pytest.param("API_KEYS", _key_as_id, id="key-as-an-id"),
        pytest.param("FORWARDED_ALLOW_IPS", _trust_every_address, id="trust-0.0.0.0/0"),
        pytest.param("FORWARDED_ALLOW_IPS", _trust_every_ipv6_address, id="trust-::/0"),
        pytest.param("RATELIMIT_STORAGE_URI", _storage_password_with_a_hash, id="storage-password-with-#"),
        pytest.param("API_KEYS", _raw_key, id="raw-key-in-API_KEYS"),
        pytest.param("API_KEYS", _raw_key_among_entries, id="raw-key-among-entries"),
        pytest.param("TLS_CERT_FILE", _unreadable_cert, id="unreadable-TLS_CERT_FILE"),
        pytest.param("TLS_KEY_FILE", _mismatched_key, id="TLS_KEY_FILE-not-matching-cert"),
        pytest.param("TLS_CERT_FILE", _production_without_tls_or_proxy, id="production-without-tls"),
        pytest.param("RATELIMIT_DEFAULT", _invalid_limit, id="invalid-RATELIMIT_DEFAULT"),
        pytest.param("RATELIMIT_DEFAULT", _zero_window, id="zero-window-RATELIMIT_DEFAULT"),
        pytest.param("RATELIMIT_STORAGE_URI", _memory_limits_with_two_workers, id="memory-with-2-workers"),
        pytest.param("keepalive", _no_header_deadline, id="keep-alive-0"),
        pytest.param("worker_class", _tls_with_the_stock_gevent_worker, id="tls-with-another-worker-class"),
    ],
)
def test_bad_configuration_stops_gunicorn_with_one_line_naming_the_variable(
    env: dict[str, str],
    keys: KeySet,
    ca: trustme.CA,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    variable: str,
    configure: Callable[[Inputs], dict[str, str]],
) -> None:
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    given = Inputs(env, keys, tls_files[0], tls_files[1], other_key, tmp_path / "absent" / "cert.pem")
    log_path = tmp_path / "gunicorn.log"
    started = time.monotonic()
    process = run_gunicorn({**configure(given), "BIND": f"127.0.0.1:{free_port()}"}, log_path)
    try:
        returncode = process.wait(timeout=15)
    except Exception:
        process.kill()
        process.wait()
        raise
    elapsed = time.monotonic() - started
    output = log_path.read_text(encoding="utf-8", errors="replace")

    assert returncode != 0, output
    assert elapsed < 10, f"took {elapsed:.1f} s to give up"
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if variable in line]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error: {variable}: "), output
    # Nothing else but gunicorn's own start line (printed when the check runs in on_starting).
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), output
    assert "Traceback" not in output
    for field in dataclasses.fields(keys):
        secret = getattr(keys, field.name).secret
        assert not [secret[i : i + 12] for i in range(len(secret) - 11) if secret[i : i + 12] in output]


# --- 4. Security headers on every kind of response -----------------------------------------------


def test_security_headers_on_200(tls_server: TlsServer, client_context: ssl.SSLContext, keys: KeySet) -> None:
    status, headers, body = request(tls_server.port, "/v1/whoami", bearer(keys.reader), client_context)
    assert status == 200
    assert json.loads(body)["key_id"] == "reader"
    assert_security_headers(headers)


def test_security_headers_and_problem_json_on_401(
    tls_server: TlsServer, client_context: ssl.SSLContext
) -> None:
    status, headers, body = request(tls_server.port, "/v1/whoami", context=client_context)
    assert_problem(status, headers, body, 401)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert_security_headers(headers)


def test_security_headers_and_problem_json_on_404(
    tls_server: TlsServer, client_context: ssl.SSLContext, keys: KeySet
) -> None:
    status, headers, body = request(tls_server.port, "/v1/nowhere", bearer(keys.writer), client_context)
    assert_problem(status, headers, body, 404)
    assert_security_headers(headers)


def test_security_headers_and_problem_json_on_429(
    tls_server: TlsServer, client_context: ssl.SSLContext, keys: KeySet
) -> None:
    # RATELIMIT_DEFAULT is "2 per minute"; this key is used by no other test of this server.
    statuses = []
    for _ in range(3):
        status, headers, body = request(tls_server.port, "/v1/whoami", bearer(keys.no_scopes), client_context)
        statuses.append(status)
    assert statuses == [200, 200, 429]
    assert_problem(status, headers, body, 429)
    assert int(headers["Retry-After"]) > 0
    assert_security_headers(headers)


def test_security_headers_and_problem_json_on_500_without_internals(
    tls_server: TlsServer, client_context: ssl.SSLContext, keys: KeySet, databases: Databases
) -> None:
    # A worker has booted (and migrated the database) once it answers; then the table goes.
    assert request(tls_server.port, "/healthz", context=client_context)[0] == 200
    databases.drop_items(tls_server.database)
    status, headers, body = request(tls_server.port, "/v1/items", bearer(keys.other_tenant), client_context)
    assert_problem(status, headers, body, 500)
    assert_security_headers(headers)
    text = body.decode()
    assert "Traceback" not in text
    assert 'File "' not in text
    assert not any(value in text for value in tls_server.database.values())
    assert "sqlite" not in text.lower()
    assert "postgres" not in text.lower()
    assert keys.other_tenant.secret not in text
    # The failure's message ("no such table: items", or PostgreSQL's "relation ... does not
    # exist") names the schema: `detail` is the fixed text, with nothing of it.
    assert json.loads(body)["detail"] == DETAILS[500]


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"GET /a b c\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    ],
    ids=["malformed-request-line", "uri-too-long", "header-too-large", "http-1.1-without-host"],
)
def test_requests_gunicorn_refuses_itself_get_problem_json_and_the_security_headers(
    tls_server: TlsServer, client_context: ssl.SSLContext, sent: bytes, status: int
) -> None:
    """gunicorn answers these before the application sees them; its worker class (worker.py)
    turns its HTML pages into problem+json with the service's headers."""
    answer = raw_exchange(tls_server.port, client_context, sent)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, _, fields = head.decode("latin-1").partition("\r\n")
    headers = http.client.parse_headers(io.BytesIO(fields.encode("latin-1") + b"\r\n\r\n"))
    assert_problem(int(status_line.split()[1]), headers, body, status)
    assert_security_headers(headers)
    assert headers["Connection"] == "close"
    assert b"html" not in answer.lower()


# --- 5. Trusted proxies only ---------------------------------------------------------------------


def test_production_proxy_mode_trusts_named_proxy_for_https(behind_trusted_proxy: Server) -> None:
    status, headers, _ = request(behind_trusted_proxy.port, "/healthz", {"X-Forwarded-Proto": "https"})
    assert status == 200
    assert_security_headers(headers)


def test_spoofed_forwarded_proto_from_untrusted_peer_gets_no_hsts(behind_other_proxy: Server) -> None:
    status, headers, _ = request(behind_other_proxy.port, "/healthz", {"X-Forwarded-Proto": "https"})
    assert status == 200
    assert "Strict-Transport-Security" not in headers
    # Every other header is still there on plain HTTP.
    assert headers.get("Content-Security-Policy") == CSP
    assert headers.get("X-Content-Type-Options") == "nosniff"


def test_spoofed_forwarded_for_from_untrusted_peer_does_not_change_rate_limit_bucket(
    behind_other_proxy: Server,
) -> None:
    statuses = [
        request(behind_other_proxy.port, "/v1/whoami", {"X-Forwarded-For": f"198.51.100.{n}"})[0]
        for n in range(1, 4)
    ]
    assert statuses == [401, 401, 429]


def test_a_trusted_proxy_cannot_reroute_a_request(behind_trusted_proxy: Server, keys: KeySet) -> None:
    """gunicorn maps no forwarded SCRIPT_NAME or PATH_INFO, even from the trusted proxy."""
    sent = {"X-Forwarded-Proto": "https", "SCRIPT_NAME": "/v1", "PATH_INFO": "/healthz"}
    status, _, body = request(behind_trusted_proxy.port, "/v1/whoami", sent)
    assert status == 401, body
    assert request(behind_trusted_proxy.port, "/v1/whoami", {**sent, **bearer(keys.reader)})[0] == 200


def test_ipv6_clients_behind_the_proxy_are_counted_by_64(behind_trusted_proxy: Server) -> None:
    def status(address: str) -> int:
        forwarded = {"X-Forwarded-For": address, "X-Forwarded-Proto": "https"}
        return request(behind_trusted_proxy.port, "/v1/whoami", forwarded)[0]

    assert [status("2001:db8:7::1"), status("2001:DB8:7:0::2"), status("2001:db8:7::ffff")] == [401, 401, 429]
    assert status("2001:db8:8::1") == 401


def test_trusted_proxy_forwarded_for_gets_separate_rate_limit_buckets(behind_trusted_proxy: Server) -> None:
    first = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    second = {"X-Forwarded-For": "203.0.113.8", "X-Forwarded-Proto": "https"}
    statuses = [request(behind_trusted_proxy.port, "/v1/whoami", first)[0] for _ in range(3)]
    assert statuses == [401, 401, 429]
    assert request(behind_trusted_proxy.port, "/v1/whoami", second)[0] == 401


# --- 6. No redirects, no 500 ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["//v1/items", "/v1//items", "//healthz"])
def test_no_path_is_redirected_to_the_host_a_client_names(
    start_server: Callable[..., Server], client_context: ssl.SSLContext, keys: KeySet, method: str, path: str
) -> None:
    server = start_server()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {keys.writer.secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    answer = raw_exchange(server.port, client_context, head.encode())
    status_line, _, rest = answer.partition(b"\r\n")
    headers = rest.partition(b"\r\n\r\n")[0].lower()
    assert int(status_line.split()[1]) not in REDIRECTS, answer[:300]
    assert b"\r\nlocation:" not in headers
    assert b"content-type: application/" in headers
    assert b"html" not in headers
    assert b"evil.example" not in answer
    # Werkzeug reads a path's leading slashes as one; any other doubled slash matches nothing.
    if "//" in path.lstrip("/"):
        assert status_line.split()[1] == b"404", answer[:300]


@pytest.mark.parametrize(
    "body",
    [b"[" * 2000 + b"]" * 2000, b'{"name": "\\ud800"}', b'{"name": "\\udfff"}'],
    ids=["nested-2000", "lone-high-surrogate", "lone-low-surrogate"],
)
def test_an_authenticated_hostile_body_is_a_4xx_never_a_500(
    start_server: Callable[..., Server], client_context: ssl.SSLContext, keys: KeySet, body: bytes
) -> None:
    server = start_server()
    head = (
        f"POST /v1/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {keys.writer.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = raw_exchange(server.port, client_context, head.encode() + body)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    assert b"application/problem+json" in rest
    logs = server.stop()
    assert "Traceback" not in logs
    assert "ERROR" not in logs


@pytest.mark.parametrize("path", ["/healthz", "/v1/whoami"])
def test_plain_http_in_proxy_mode_is_answered_not_redirected(
    behind_trusted_proxy: Server, keys: KeySet, path: str
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", **bearer(keys.reader)}
    status, headers, body = request(behind_trusted_proxy.port, path, forwarded)
    assert status not in REDIRECTS
    assert "Location" not in headers
    assert status == 200, body


@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Forwarded-For": "198.51.100.71"},
        {"X-Forwarded-For": "198.51.100.72", "X-Forwarded-Proto": "http"},
    ],
    ids=["no-scheme", "plain-http-scheme"],
)
def test_a_key_the_proxy_took_over_plain_http_is_refused_in_production(
    behind_trusted_proxy: Server, keys: KeySet, forwarded: dict[str, str]
) -> None:
    """The proxy accepted the client's request in cleartext: its key was exposed on the way.
    A 403 that says why makes the client notice, where an answer would hide it. (A client
    address per case: the refused key does not count, its address does, two a minute here.)"""
    sent = {**forwarded, **bearer(keys.reader)}
    status, headers, body = request(behind_trusted_proxy.port, "/v1/whoami", sent)
    assert status not in REDIRECTS
    assert_problem(status, headers, body, 403)
    assert b"HTTPS" in body
    assert request(behind_trusted_proxy.port, "/healthz", forwarded)[0] == 200
    lines = [line for line in behind_trusted_proxy.logs().splitlines() if '"path": "/healthz"' in line]
    assert lines
    assert all('"auth_failure": null' in line for line in lines), lines


def test_a_peer_that_is_not_the_proxy_cannot_use_a_key_over_plain_http(
    keys: KeySet, tmp_path: Path, database_env: dict[str, str]
) -> None:
    """Proxy mode in production, and the client connects to the service directly."""
    server = proxied_server(keys, tmp_path, database_env, "10.255.255.1", "production")
    try:
        spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.255.255.1", **bearer(keys.reader)}
        status, headers, body = request(server.port, "/v1/whoami", spoofed)
        assert_problem(status, headers, body, 403)
        assert "Strict-Transport-Security" not in headers
        assert request(server.port, "/healthz")[0] == 200
    finally:
        server.stop()
