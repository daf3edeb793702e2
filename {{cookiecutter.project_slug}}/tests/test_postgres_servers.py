"""PostgreSQL under real gunicorn masters: a schema that is missing, or a role that row-level
security would not bind, stops the start in one line, and a reload onto it is refused; two hosts
share one database and one Redis; a stopped or frozen server costs 503s in time and nothing else;
a slow query does not hold up the gevent worker that waits for it; and the first run works as
printed (make db, make migrate, a request), as does compose.yaml's set-up script."""

from __future__ import annotations

import json
import os
import shutil
import signal
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
from typing import NoReturn

import psycopg
import pytest

from {{ cookiecutter.package_name }}.database import schema_problem
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.settings import database_settings_from

from .database import Databases, local_postgres
from .support import (
    PROJECT,
    KeySet,
    RedisServer,
    Server,
    bearer,
    free_port,
    refused_start,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT = 2  # DATABASE_CONNECT_TIMEOUT's default
# Seconds a loaded machine may add to a bound before an answer counts as late.
SLACK = 4


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
        result = refused_start(settings)
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


@pytest.mark.parametrize(
    ("statements", "refusal"),
    [
        (
            ["CREATE ROLE {role}_above NOLOGIN SUPERUSER", "GRANT {role}_above TO {role}"],
            "error: DATABASE_URL: its role is, or can become, a superuser",
        ),
        (["GRANT SELECT ON items TO {role}"], "error: DATABASE_URL: its role cannot read alembic_version"),
    ],
    ids=["member-of-a-superuser-role", "cannot-read-alembic-version"],
)
def test_a_service_whose_role_row_level_security_would_not_bind_refuses_to_start_in_one_line(
    env: dict[str, str],
    role_env: Callable[..., dict[str, str]],
    tls_files: tuple[Path, Path],
    statements: list[str],
    refusal: str,
) -> None:
    settings = {
        **env,
        **role_env(*statements),
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
    }
    result = refused_start(settings)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "DATABASE_URL" in line]
    assert len(errors) == 1, lines
    assert errors[0].startswith(refusal)
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), lines


def test_a_reload_onto_a_role_that_can_become_a_superuser_is_refused_and_items_are_served_on(
    start_server: Callable[..., Server],
    env: dict[str, str],
    role_env: Callable[..., dict[str, str]],
    keys: KeySet,
    client_context: ssl.SSLContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload applies the start's database checks: DATABASE_URL_FILE rewritten to name a role
    that can become a superuser is refused in one line, and the new workers serve items as
    before, with the role the start checked."""
    url_file = tmp_path / "database-url"
    url_file.write_text(env["DATABASE_URL"])
    # The server inherits this process's environment, where a development .env read by another
    # test may have left a DATABASE_URL: the file must be the only source.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    server = start_server(DATABASE_URL=None, DATABASE_URL_FILE=str(url_file))
    assert call(server, client_context, keys.reader, "/v1/items")[0] == 200
    booted = worker_pids(server)
    above = role_env("CREATE ROLE {role}_above NOLOGIN SUPERUSER", "GRANT {role}_above TO {role}")
    url_file.write_text(above["DATABASE_URL"])
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while not (worker_pids(server) and not worker_pids(server) & booted):
        assert time.monotonic() < deadline, "the reload started no new workers"
        time.sleep(0.1)
    assert [call(server, client_context, keys.reader, "/v1/items")[0] for _ in range(3)] == [200] * 3
    refusals = [line for line in server.logs().splitlines() if "reload refused" in line]
    assert len(refusals) == 1, refusals
    refused = json.loads(refusals[0])
    assert refused["message"] == "reload refused, still serving the previous configuration"
    assert refused["reason"].startswith("DATABASE_URL: its role is, or can become, a superuser")
    assert above["DATABASE_URL"].split("@")[0].rsplit(":", 1)[1] not in server.logs()


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
def own_cluster() -> Iterator[local_postgres.PostgresCluster]:
    """A PostgreSQL server of its own, with no role but its superuser yet."""
    try:
        cluster = local_postgres.PostgresCluster().initialize()
    except local_postgres.Unavailable as reason:
        unavailable(reason)
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture
def own_server(own_cluster: local_postgres.PostgresCluster) -> local_postgres.PostgresCluster:
    """A PostgreSQL server of its own, with both roles and a migrated database, which the test
    stops (or freezes) and starts again."""
    own_cluster.create_roles()
    own_cluster.create_database("items")
    local_postgres.migrate(own_cluster.urls("items"), PROJECT)
    return own_cluster


def unavailable(reason: Exception) -> NoReturn:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(str(reason))


def test_a_database_stopped_under_load_costs_503s_in_time_and_items_return_by_themselves(
    start_server: Callable[..., Server],
    own_server: local_postgres.PostgresCluster,
    redis_server: RedisServer,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    """Two workers, each with its own pool: the first request each meets after the stop costs
    no more than the others, DATABASE_CONNECT_TIMEOUT."""
    server = start_server(
        DATABASE_URL=own_server.url("items"),
        RATELIMIT_DEFAULT="100000 per hour",
        RATELIMIT_STORAGE_URI=redis_server.uri,
        WEB_CONCURRENCY="2",
    )
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
    served = logged_seconds(server, "/v1/items", 503)
    slowest = max(a[4] for a in down)
    print(f"\nstopped: {len(down)} answers, slowest {slowest:.2f} s ({max(served):.2f} s in the service)")
    assert max(served) < CONNECT_TIMEOUT + 1
    assert slowest < CONNECT_TIMEOUT + SLACK
    assert {a[2] for a in answers} <= {200, 503}, Counter(a[2] for a in answers)
    assert {a[2] for a in answers if a[1] == "/v1/whoami"} == {200}
    back = [a for a in answers if a[0] >= started + 3 and a[1] == "/v1/items"]
    assert back, "no item request was answered after the database came back"
    assert {a[2] for a in back} == {200}, Counter(a[2] for a in back)


def logged_seconds(server: Server, path: str, status: int) -> list[float]:
    """How long each such request took in the service, from its log line: a client's own figure
    adds the time its connection waited for a busy (or starved) worker, which says nothing about
    the database."""
    found = []
    for line in server.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (record.get("path"), record.get("status")) == (path, status):
            found.append(record["duration_ms"] / 1000)
    return found


def worker_pids(server: Server) -> set[int]:
    pid = server.process.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_a_frozen_database_costs_503s_in_time_and_items_return_without_a_restart(
    start_server: Callable[..., Server],
    own_server: local_postgres.PostgresCluster,
    keys: KeySet,
    client_context: ssl.SSLContext,
) -> None:
    """Every server process stopped (SIGSTOP): no reset, the kernel acknowledges every packet,
    so no socket option fires and the server cannot enforce its statement timeout. A request
    whose statement is under way (held by a lock) gives up after DATABASE_STATEMENT_TIMEOUT and
    a second; a new one after DATABASE_CONNECT_TIMEOUT. Without a deadline of the client's own,
    both would wait for as long as the server stays stopped."""
    statement_timeout = 2
    server = start_server(
        "--workers",
        "1",
        DATABASE_URL=own_server.url("items"),
        DATABASE_STATEMENT_TIMEOUT=str(statement_timeout),
    )
    assert call(server, client_context, keys.writer, "/v1/items", {"name": "before"})[0] == 201
    workers = worker_pids(server)
    with (
        psycopg.connect(own_server.superuser_url("items")) as admin,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        admin.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        under_way = pool.submit(call, server, client_context, keys.reader, "/v1/items")
        time.sleep(0.5)
        own_server.freeze()
        try:
            time.sleep(0.5)
            new = [pool.submit(call, server, client_context, keys.reader, "/v1/items") for _ in range(3)]
            others = call(server, client_context, keys.reader, "/v1/whoami")
            answers = [future.result(timeout=60) for future in (under_way, *new)]
        finally:
            own_server.thaw()
        admin.rollback()
    assert others[0] == 200
    assert [answer[0] for answer in answers] == [503] * 4
    assert all(int(answer[1]["Retry-After"]) > 0 for answer in answers)
    seconds = [answer[3] for answer in answers]
    # The request under way: the server's statement timeout, and the second the client adds.
    assert statement_timeout < seconds[0] < statement_timeout + 1 + SLACK
    # The new ones: a connection that answers, or none, within DATABASE_CONNECT_TIMEOUT.
    assert max(seconds[1:]) < CONNECT_TIMEOUT + SLACK
    deadline = time.monotonic() + 20
    while call(server, client_context, keys.reader, "/v1/items")[0] != 200:
        assert time.monotonic() < deadline, "items did not come back after the server resumed"
        time.sleep(0.2)
    served = sorted(logged_seconds(server, "/v1/items", 503))
    print(f"\nfrozen: answered in {', '.join(f'{n:.2f}' for n in seconds)} s; in the service {served} s")
    assert len(served) >= 4
    assert served[-1] < statement_timeout + 1 + 1
    assert served[-2] < CONNECT_TIMEOUT + 1
    assert server.process.poll() is None
    assert worker_pids(server) == workers, "a worker was restarted"


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


# --- the first run, as printed --------------------------------------------------------------------


def test_make_db_then_make_migrate_then_a_request_works_as_printed(
    tmp_path: Path, keys: KeySet, tls_files: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    """In a copy of this project (its own .dev/ and .env): make db makes a server with both roles
    from the passwords in .dev/, and a second make db reuses it; make migrate migrates as the
    owner; the service, reading .env, serves items as the other role."""
    try:
        local_postgres.server_directory()
    except local_postgres.Unavailable as reason:
        unavailable(reason)
    ignore = shutil.ignore_patterns(".venv", "*cache*", "__pycache__", "*.sqlite3*", "mutants", "postgres")
    project = shutil.copytree(PROJECT, tmp_path / "project", ignore=ignore)
    make = ["make", "--no-print-directory", f"PYTHON={sys.executable}"]
    port = local_postgres.free_port()

    def run(*target: str) -> str:
        done = subprocess.run(
            [*make, *target], cwd=project, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        assert "made and started" in run("db", f"DB_PORT={port}")
        assert "already running" in run("db", f"DB_PORT={port}")
        run("migrate")
        env = (project / ".env").read_text()
        password = (project / ".dev" / "items-password").read_text().strip()
        assert f"DATABASE_URL=postgresql://items_service:{password}@" in env
        assert f"@127.0.0.1:{port}/items" in env
        assert (project / ".env").stat().st_mode & 0o777 == 0o600
        server = serve(project, tmp_path, keys, tls_files)
        try:
            status, _, item, _ = call(server, client_context, keys.writer, "/v1/items", {"name": "first"})
            assert status == 201
            assert call(server, client_context, keys.reader, f"/v1/items/{item['id']}")[0] == 200  # type: ignore[index]
        finally:
            server.stop()
    finally:
        run("db-stop")
        shutil.rmtree(local_postgres.cluster_directory(project), ignore_errors=True)


def serve(project: Path, tmp_path: Path, keys: KeySet, tls_files: tuple[Path, Path]) -> Server:
    """gunicorn in ``project``, in development (its .env read), on a free port."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS", "DATABASE_", "GUNICORN_"))},
        "PYTHONPATH": str(project / "src"),
        "APP_ENV": "development",
        "API_KEYS": keys.entries,
        "BIND": f"127.0.0.1:{port}",
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
    }
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn"],
            cwd=project,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, process, log_path)
    wait_until_serving(server)
    return server


def test_compose_initdb_script_makes_the_roles_the_service_starts_with(
    tmp_path: Path, own_cluster: local_postgres.PostgresCluster
) -> None:
    """compose/initdb.sh, as the postgres image runs it at its first start, on a server of our
    own (psql, no container): both roles, the database, and privileges that the migrations and
    the service's start check accept."""
    passwords = {}
    for role, variable in (
        (local_postgres.OWNER_ROLE, "ITEMS_OWNER_PASSWORD_FILE"),
        (local_postgres.SERVICE_ROLE, "ITEMS_PASSWORD_FILE"),
    ):
        (tmp_path / role).write_text(own_cluster.passwords[role] + "\n")
        passwords[variable] = str(tmp_path / role)
    environment = {
        **os.environ,
        **passwords,
        "POSTGRES_USER": "postgres",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(own_cluster.port),
        "PGPASSWORD": own_cluster.password,
    }
    subprocess.run(
        ["sh", str(PROJECT / "compose" / "initdb.sh")], env=environment, capture_output=True, check=True
    )
    local_postgres.migrate(own_cluster.urls("items"), PROJECT)
    with (
        psycopg.connect(own_cluster.url("items")) as service,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        service.execute("ALTER TABLE items NO FORCE ROW LEVEL SECURITY")
    assert schema_problem(database_settings_from({"DATABASE_URL": own_cluster.url("items")})) is None
