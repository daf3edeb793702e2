"""Fixtures: keys minted per test run, apps built from explicit settings, and real processes
(gunicorn over TLS, redis-server) started on free ports and stopped afterwards."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from flask import Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.logging import configure
from {{ cookiecutter.package_name }}.settings import Settings, settings_from
from {{ cookiecutter.package_name }}.stores import Stores

from .support import KeySet, RedisServer, Server, free_port, run_gunicorn, wait_until_serving

# `databases` and `database_env`: the items database of this project's kind (tests/database.py).
pytest_plugins = ("tests.database",)


@pytest.fixture(scope="session", autouse=True)
def service_logging() -> None:
    """The service's logging, set up before any test as the first app would set it up. Built
    inside a test's body, that first app would replace the root logger's handlers, pytest's log
    capture among them, and a test of what it logs would see nothing only when it runs first."""
    configure(key_prefix=KEY_PREFIX, json_lines=True, level="INFO")


@pytest.fixture(scope="session")
def keys() -> KeySet:
    return KeySet(
        reader=mint(KEY_PREFIX, key_id="reader", scopes=["items:read"], tenant="acme"),
        writer=mint(KEY_PREFIX, key_id="writer", scopes=["items:read", "items:write"], tenant="acme"),
        other_tenant=mint(KEY_PREFIX, key_id="other", scopes=["items:read", "items:write"], tenant="globex"),
        no_scopes=mint(KEY_PREFIX, key_id="plain", scopes=["reports:read"], tenant="acme"),
        expired=mint(KEY_PREFIX, key_id="expired", scopes=["items:read"], expires=dt.date(2020, 1, 1)),
        unconfigured=mint(KEY_PREFIX, key_id="ghost", scopes=["items:read"]),
    )


@pytest.fixture
def env(keys: KeySet, database_env: dict[str, str]) -> dict[str, str]:
    """A valid test environment; tests change it before building settings."""
    return {"APP_ENV": "test", "API_KEYS": keys.entries, **database_env}


@pytest.fixture
def make_app(env: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    stores: list[Stores] = []

    def build(**overrides: str) -> Flask:
        app = create_app(settings_from({**env, **overrides}))
        stores.append(app.extensions["stores"])
        return app

    yield build
    for store in stores:
        # A store may hold connections (PostgreSQL's pool): give them back after each test.
        store.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return settings_from(env)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return cert_path, key_path


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def start_server(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """Start gunicorn with TLS (unless ``tls=False``) and the test keys; stop it afterwards."""
    servers: list[Server] = []

    def start(*args: str, tls: bool = True, **overrides: str | None) -> Server:
        """``NAME=None`` removes a variable of the test environment."""
        port = free_port()
        merged = {**env, "BIND": f"127.0.0.1:{port}", **overrides}
        settings = {name: value for name, value in merged.items() if value is not None}
        if tls:
            settings.setdefault("TLS_CERT_FILE", str(tls_files[0]))
            settings.setdefault("TLS_KEY_FILE", str(tls_files[1]))
        log_path = tmp_path / f"gunicorn-{port}.log"
        process = run_gunicorn(settings, log_path, *args)
        server = Server(port, process, log_path, "https" if tls else "http")
        servers.append(server)
        wait_until_serving(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port, without persistence; yields its URI.

    Skipped (visibly) when redis-server is not installed, unless REQUIRE_REDIS=1 is set, as
    the template's CI does: there a missing server is a failure.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server is not installed: Redis storage tests skipped")
    server = RedisServer(binary, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_process: RedisServer) -> RedisServer:
    """The session's redis-server, running (a test may have stopped it) and emptied."""
    if not redis_process.running:
        redis_process.start()
    redis_process.command(b"FLUSHALL")
    return redis_process
