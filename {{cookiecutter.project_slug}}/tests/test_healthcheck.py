"""The health check (``python -m <package>.healthcheck``, the image's HEALTHCHECK) calls the
service where BIND says it listens, over TLS when the service serves it, and fails with one line
where nothing healthy answers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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
