"""The health check (``python -m <package>.healthcheck``, the image's HEALTHCHECK) calls the
service where BIND says it listens, over TLS when the service serves it, and fails with one line
where nothing healthy answers."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import gunicorn.config
import pytest
import trustme

from {{ cookiecutter.package_name }}.healthcheck import GUNICORN_PORT, address, main

from .support import PROJECT, Server, free_port, server_env

COMMAND = (sys.executable, "-m", "{{ cookiecutter.package_name }}.healthcheck")


@pytest.mark.parametrize(
    ("bind", "called"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("0.0.0.0:9443", ("127.0.0.1", 9443)),
        ("[::]:9443", ("::1", 9443)),
        ("[0:0::0]:9443", ("::1", 9443)),
        ("[::1]:9443", ("::1", 9443)),
        ("[2001:db8::7]", ("2001:db8::7", GUNICORN_PORT)),
        ("localhost", ("localhost", GUNICORN_PORT)),
        (":9443", ("127.0.0.1", 9443)),
        ("tcp://10.0.0.5:8443", ("10.0.0.5", 8443)),
    ],
)
def test_the_check_calls_what_gunicorn_binds_and_loopback_for_every_address(
    bind: str, called: tuple[str, int]
) -> None:
    assert address(bind) == called


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("unix:/run/api.sock", "BIND: names a socket; the health check calls a TCP address"),
        ("fd://3", "BIND: names a socket; the health check calls a TCP address"),
        ("127.0.0.1:https", "BIND: the port is not a number"),
        ("[::1]]:9443", "BIND: the port is not a number"),
    ],
)
def test_a_bind_the_check_cannot_call_is_named(bind: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^{problem}$"):
        address(bind)


def check(env: dict[str, str], **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """The health check, run as the image runs it, with the service's environment."""
    merged = {**env, **overrides}
    environment = server_env({name: value for name, value in merged.items() if value is not None})
    return subprocess.run(
        COMMAND, cwd=PROJECT, env=environment, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.slow
def test_the_check_passes_over_tls_on_the_port_that_bind_names(
    start_server: Callable[..., Server], env: dict[str, str], tls_files: tuple[Path, Path]
) -> None:
    server = start_server()
    tls = {"TLS_CERT_FILE": str(tls_files[0]), "TLS_KEY_FILE": str(tls_files[1])}
    passed = check(env, **tls, BIND=f"0.0.0.0:{server.port}")
    assert (passed.returncode, passed.stderr) == (0, "")

    elsewhere = check(env, **tls, BIND=f"127.0.0.1:{free_port()}")
    assert elsewhere.returncode == 1
    assert elsewhere.stderr == "unhealthy: GET /healthz: ConnectionRefusedError\n"


@pytest.mark.slow
def test_the_check_speaks_plain_http_only_to_a_service_that_serves_no_tls(
    start_server: Callable[..., Server], env: dict[str, str], tls_files: tuple[Path, Path]
) -> None:
    plain = start_server(tls=False)
    passed = check(env, BIND=f"127.0.0.1:{plain.port}")
    assert (passed.returncode, passed.stderr) == (0, "")

    # A TLS service is never called over plain HTTP, nor a plain one trusted as TLS.
    secure = start_server()
    refused = check(env, BIND=f"127.0.0.1:{secure.port}")
    assert refused.returncode == 1
    assert refused.stderr.startswith("unhealthy: GET /healthz: ")
    tls = {"TLS_CERT_FILE": str(tls_files[0]), "TLS_KEY_FILE": str(tls_files[1])}
    mismatched = check(env, **tls, BIND=f"127.0.0.1:{plain.port}")
    assert mismatched.returncode == 1
    assert mismatched.stderr.startswith("unhealthy: GET /healthz: ")


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ({"TLS_CERT_FILE": "/nonexistent.pem"}, "TLS_CERT_FILE: cannot read the file (FileNotFoundError)"),
        ({"BIND": "unix:/run/api.sock"}, "BIND: names a socket; the health check calls a TCP address"),
        ({}, "GET /healthz: ConnectionRefusedError"),
    ],
    ids=["unreadable-certificate", "socket", "nothing-listens"],
)
def test_a_check_that_cannot_succeed_fails_with_one_line(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str],
    said: str,
) -> None:
    monkeypatch.delenv("TLS_CERT_FILE", raising=False)
    for name, value in {**env, "BIND": f"127.0.0.1:{free_port()}", **overrides}.items():
        monkeypatch.setenv(name, value)
    assert main() == 1
    assert capsys.readouterr().err == f"unhealthy: {said}\n"


class Answering(http.server.BaseHTTPRequestHandler):
    """A stand-in for the service: it answers the status its server holds, and keeps what it was
    asked."""

    server: Service

    def do_GET(self) -> None:
        self.server.asked.append((self.command, self.path, self.headers.get("Connection")))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Nothing on the test's stderr, which the check's one line is compared with."""


class Service(http.server.ThreadingHTTPServer):
    def __init__(self, status: int, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), Answering)
        self.status, self.context = status, context
        self.asked: list[tuple[str, str, str | None]] = []

    def get_request(self) -> tuple[socket.socket, object]:
        connection, peer = super().get_request()
        if self.context is not None:
            connection = self.context.wrap_socket(connection, server_side=True)
        return connection, peer


@pytest.fixture
def serve(ca: trustme.CA, tmp_path: Path) -> Iterator[Callable[..., tuple[Service, Path | None]]]:
    """A service on loopback, over TLS with a certificate for another name than the address the
    check calls (the file holds that certificate alone, not its issuer), or over plain HTTP."""
    services: list[Service] = []

    def start(status: int = 200, *, tls: bool = True) -> tuple[Service, Path | None]:
        context, certificate = None, None
        if tls:
            issued = ca.issue_cert("api.example.test")
            certificate = tmp_path / "cert.pem"
            issued.cert_chain_pems[0].write_to_path(str(certificate))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            issued.configure_cert(context)
        service = Service(status, context)
        services.append(service)
        threading.Thread(target=service.serve_forever, daemon=True).start()
        return service, certificate

    yield start
    for service in services:
        service.shutdown()
        service.server_close()


def run_check(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], service: Service, certificate: Path | None
) -> int:
    monkeypatch.delenv("TLS_CERT_FILE", raising=False)
    for name, value in {**env, "BIND": f"0.0.0.0:{service.server_address[1]}"}.items():
        monkeypatch.setenv(name, value)
    if certificate is not None:
        monkeypatch.setenv("TLS_CERT_FILE", str(certificate))
    return main()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_the_check_passes_on_a_200_from_the_service_over_its_own_transport(
    serve: Callable[..., tuple[Service, Path | None]],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls: bool,
) -> None:
    # Over TLS, the check trusts the service's own certificate, however it is named: the check
    # calls an address, and the file holds no issuer to chain to.
    service, certificate = serve(tls=tls)
    assert run_check(monkeypatch, env, service, certificate) == 0
    assert capsys.readouterr().err == ""
    # One GET of /healthz, which asks the service not to keep the connection open after it.
    assert service.asked == [("GET", "/healthz", "close")]


def test_a_service_that_answers_other_than_200_is_unhealthy(
    serve: Callable[..., tuple[Service, Path | None]],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service, certificate = serve(503)
    assert run_check(monkeypatch, env, service, certificate) == 1
    assert capsys.readouterr().err == "unhealthy: GET /healthz answered 503\n"


def test_a_bind_without_a_port_is_called_on_gunicorns_default_port() -> None:
    default = gunicorn.config.Config().bind
    assert default == [f"127.0.0.1:{GUNICORN_PORT}"]
    assert address("127.0.0.1") == ("127.0.0.1", GUNICORN_PORT)
