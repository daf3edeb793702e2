"""PostgreSQL under real gunicorn masters: a schema that is missing stops the start, two hosts
share one database and one Redis, a stopped server costs 503s and nothing else, and a slow
query does not hold up the gevent worker that waits for it."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint

from .database import Databases, local_postgres
from .support import PROJECT, KeySet, RedisServer, Server, bearer, script, server_env

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT = 2  # DATABASE_CONNECT_TIMEOUT's default


def call(
    server: Server, context: ssl.SSLContext, key: MintedKey, path: str, body: dict[str, str] | None = None
) -> tuple[int, dict[str, str], object, float]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers=bearer(key))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    return status, headers, json.loads(raw), time.monotonic() - started


def test_a_service_on_an_empty_database_refuses_to_start_naming_alembic_upgrade_head(
    env: dict[str, str], databases: Databases, tls_files: tuple[Path, Path]
) -> None:
    empty = databases.new(migrated=False)
    try:
        settings = {**env, **empty, "TLS_CERT_FILE": str(tls_files[0]), "TLS_KEY_FILE": str(tls_files[1])}
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn"],
            cwd=PROJECT,
            env=server_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        databases.drop(empty)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "DATABASE_URL" in line]
    assert errors == ["error: DATABASE_URL: the database has no schema yet: run `alembic upgrade head`"]
    # Nothing else but gunicorn's own start line (printed before the check in on_starting).
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), lines
    password = empty["DATABASE_URL"].split("@")[0].rsplit(":", 1)[1]
    assert password not in result.stdout + result.stderr


# --- two hosts ----------------------------------------------------------------------------------


@pytest.fixture
def writers() -> list[MintedKey]:
    """Four writers of one tenant: POST /v1/items allows 30 per minute per key."""
    scopes = ["items:read", "items:write"]
    return [mint(KEY_PREFIX, key_id=f"writer-{n}", scopes=scopes, tenant="acme") for n in range(4)]


def test_two_hosts_share_items_and_lose_or_duplicate_none_of_60_parallel_creates(
    start_server: Callable[..., Server],
    redis_server: RedisServer,
    keys: KeySet,
    writers: list[MintedKey],
    client_context: ssl.SSLContext,
) -> None:
    entries = ",".join([keys.entries, *(writer.entry for writer in writers)])
    shared = {"API_KEYS": entries, "RATELIMIT_STORAGE_URI": redis_server.uri, "WEB_CONCURRENCY": "2"}
    first, second = start_server(**shared), start_server(**shared)

    status, _, item, _ = call(first, client_context, keys.writer, "/v1/items", {"name": "made on one"})
    assert status == 201
    assert call(second, client_context, keys.reader, f"/v1/items/{item['id']}")[:3:2] == (200, item)  # type: ignore[index]
    assert call(second, client_context, keys.other_tenant, f"/v1/items/{item['id']}")[0] == 404

    jobs = [(host, writers[n % 4], f"parallel {n}") for n, host in enumerate([first, second] * 30)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        made = list(
            pool.map(lambda job: call(job[0], client_context, job[1], "/v1/items", {"name": job[2]}), jobs)
        )
    assert Counter(answer[0] for answer in made) == {201: 60}
    listed = call(first, client_context, keys.reader, "/v1/items?limit=100")[2]["items"]  # type: ignore[index]
    names = [entry["name"] for entry in listed]
    assert sorted(names) == sorted(["made on one", *(f"parallel {n}" for n in range(60))])
    assert len({entry["id"] for entry in listed}) == 61
    assert call(second, client_context, keys.other_tenant, "/v1/items")[2] == {"items": [], "next": None}


# --- outage -------------------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[local_postgres.PostgresCluster]:
    """A PostgreSQL server of its own, which the test stops and starts again."""
    try:
        cluster = local_postgres.PostgresCluster().initialize()
    except local_postgres.Unavailable as reason:
        pytest.skip(str(reason))
    cluster.start()
    cluster.create_service_role()
    local_postgres.migrate(cluster.create_database("items"), PROJECT)
    yield cluster
    cluster.remove()


def test_a_database_stopped_under_load_costs_503s_in_time_and_items_return_by_themselves(
    start_server: Callable[..., Server],
    own_server: local_postgres.PostgresCluster,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    server = start_server(DATABASE_URL=own_server.url("items"), RATELIMIT_DEFAULT="100000 per hour")
    answers: list[tuple[float, str, int, dict[str, str], float]] = []
    stop = threading.Event()

    def load(path: str) -> None:
        while not stop.is_set():
            status, headers, _, seconds = call(server, client_context, keys.writer, path)
            answers.append((time.monotonic(), path, status, headers, seconds))

    threads = [
        threading.Thread(target=load, args=(path,)) for path in ("/v1/items", "/v1/items", "/v1/whoami")
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        own_server.stop()
        stopped = time.monotonic()
        time.sleep(4)
        own_server.start()
        started = time.monotonic()
        time.sleep(6)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    down = [a for a in answers if stopped + 0.5 <= a[0] < started and a[1] == "/v1/items"]
    assert down, "no item request was answered while the database was down"
    assert {a[2] for a in down} == {503}
    assert all(int(a[3]["Retry-After"]) > 0 for a in down)
    assert max(a[4] for a in down) < CONNECT_TIMEOUT + 1
    assert {a[2] for a in answers} <= {200, 503}, Counter(a[2] for a in answers)
    assert {a[2] for a in answers if a[1] == "/v1/whoami"} == {200}
    back = [a for a in answers if a[0] >= started + 3 and a[1] == "/v1/items"]
    assert back, "no item request was answered after the database came back"
    assert {a[2] for a in back} == {200}, Counter(a[2] for a in back)


def test_the_load_and_fault_database_phase_passes(
    tmp_path: Path, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operators' script: its outage phase, against a service started as production runs
    it, on a PostgreSQL server of its own (scripts/local_database.py)."""
    monkeypatch.syspath_prepend(str(PROJECT / "scripts"))  # its imports of the other scripts
    load_and_fault = script("load_and_fault")
    service = script("local_service").LocalService(
        tmp_path, keys.entries, RATELIMIT_DEFAULT="100000 per hour"
    )
    service.start()
    try:
        context = ssl.create_default_context(cafile=str(service.cafile))
        rules = load_and_fault.database_outage(service, context, [keys.reader.secret, keys.writer.secret], 20)
    finally:
        service.stop()
    assert all(passed for _, passed, _ in rules), rules


# --- gevent -------------------------------------------------------------------------------------


def test_a_query_waiting_on_a_lock_does_not_hold_up_the_other_requests_of_its_worker(
    start_server: Callable[..., Server],
    env: dict[str, str],
    databases: Databases,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    """One gevent worker. If psycopg waited for the server without yielding to gevent, the
    whole worker would stop while one request waits for a table lock."""
    server = start_server("--workers", "1", DATABASE_STATEMENT_TIMEOUT="5")
    with databases.superuser(env) as admin:
        admin.autocommit = False
        admin.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(call, server, client_context, keys.reader, "/v1/items")
            time.sleep(0.5)
            status, _, _, _ = call(server, client_context, keys.reader, "/v1/whoami")
            # Order, not a stopwatch: a stopped worker could answer only after the statement
            # timeout had ended the waiting request.
            assert (status, waiting.done()) == (200, False)
            blocked_status, headers, _, blocked_seconds = waiting.result(timeout=20)
        admin.rollback()
    # The statement timeout cancelled the waiting query: 503, not a hang.
    assert blocked_status == 503
    assert int(headers["Retry-After"]) > 0
    # A hang would last until the client's 20 s; the slack is for a loaded machine.
    assert 4.5 < blocked_seconds < 5 + 5
