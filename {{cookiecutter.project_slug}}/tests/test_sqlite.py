"""SQLite: the service migrates its file at start (in the gunicorn master, once; without a
master, the app itself), a file made before migrations is adopted, ``alembic`` goes up and down
from the project root, a file the service cannot migrate stops gunicorn with one line, the file
is private, and a held write lock delays writes only: 503 after the budget, never another
route of the worker."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import gevent
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }} import database
from {{ cookiecutter.package_name }}.keys import MintedKey
from {{ cookiecutter.package_name }}.settings import ConfigError, Settings, settings_from
from {{ cookiecutter.package_name }}.stores import StoreUnavailable
from {{ cookiecutter.package_name }}.stores.connections import Database, _GeventThreads

from .database import Databases
from .support import PROJECT, KeySet, Server, bearer, refused_start, server_env

PRIVATE = 0o600
# The legitimate client and the writers speak from their own loopback addresses.
CLIENT, WRITER = "127.0.0.3", "127.0.0.2"


def head_revision() -> str:
    """The newest revision of the project's migrations, as Alembic reads them."""
    config = Config()
    config.set_main_option("script_location", "{{ cookiecutter.package_name }}:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def tables_and_revision(path: str) -> tuple[set[str], list[tuple[str]]]:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return tables, revision


def hold_write_lock(path: str) -> sqlite3.Connection:
    """Another process's write in progress (a backup, VACUUM, a migration): SQLite's write lock."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- migrations ------------------------------------------------------------------------------


def test_the_service_migrates_a_new_file_at_start(
    make_app: Callable[..., Flask], env: dict[str, str]
) -> None:
    make_app()
    tables, revision = tables_and_revision(env["ITEMS_DB"])
    assert {"items", "alembic_version"} <= tables
    assert revision == [(head_revision(),)]


def test_a_file_made_before_migrations_is_adopted_with_its_items(
    make_app: Callable[..., Flask], env: dict[str, str], keys: KeySet
) -> None:
    with sqlite3.connect(env["ITEMS_DB"]) as db:
        db.execute("CREATE TABLE items (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,"
                   " created_at TEXT NOT NULL)")  # fmt: skip
        db.execute("INSERT INTO items VALUES ('0' || hex(randomblob(15)), 'acme', 'old', '2026-01-01')")
    client = make_app().test_client()
    assert [
        item["name"] for item in client.get("/v1/items", headers=bearer(keys.reader)).get_json()["items"]
    ] == ["old"]
    assert tables_and_revision(env["ITEMS_DB"])[1] == [(head_revision(),)]


def test_migrations_go_up_and_down_from_the_project_root(tmp_path: Path) -> None:
    path = str(tmp_path / "items.sqlite3")

    def alembic(*args: str) -> None:
        environ = {"PATH": "/usr/bin:/bin", "ITEMS_DB": path}
        command = [sys.executable, "-m", "alembic", *args]
        subprocess.run(command, cwd=PROJECT, env=environ, check=True, capture_output=True, timeout=60)

    alembic("upgrade", "head")
    assert "items" in tables_and_revision(path)[0]
    alembic("downgrade", "base")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'items'").fetchall() == []
    alembic("upgrade", "head")
    assert tables_and_revision(path)[1] == [(head_revision(),)]


def test_a_worker_forked_from_a_master_that_migrated_does_not_migrate_again(
    settings: Settings, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "_migrated", None)  # this process has no master
    path = env["ITEMS_DB"]
    assert database.migrates_itself(path)
    database.prepare_database(settings, 2, 1000)  # what the gunicorn master runs before forking
    assert not database.migrates_itself(path)
    assert database.migrates_itself(f"{path}.another")
    # Undone behind the master's back: a worker that migrated would bring the tables back.
    with sqlite3.connect(path) as db:
        for table in tables_and_revision(path)[0] - {"alembic_version"}:
            db.execute(f"DROP TABLE {table}")
        db.execute("DELETE FROM alembic_version")
    database.open_stores(settings).close()
    assert tables_and_revision(path) == ({"alembic_version"}, [])


def test_a_file_the_service_cannot_migrate_stops_gunicorn_with_one_line(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    unwritable = tmp_path / "a-file-not-a-directory"
    unwritable.write_text("")
    settings = {**env, "ITEMS_DB": str(unwritable / "items.sqlite3")}
    settings.update(TLS_CERT_FILE=str(tls_files[0]), TLS_KEY_FILE=str(tls_files[1]))
    result = refused_start(settings)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "ITEMS_DB" in line]
    assert errors == ["error: ITEMS_DB: cannot be migrated (NotADirectoryError)"]
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), lines


@pytest.mark.parametrize("value", [":memory:", ""], ids=["in-memory", "empty"])
def test_a_database_that_workers_cannot_share_stops_the_start(env: dict[str, str], value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from({**env, "ITEMS_DB": value})
    assert raised.value.variable == "ITEMS_DB"


def test_a_file_that_a_newer_release_migrated_stops_the_master_with_one_line_naming_items_db(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolled back to this release after a newer one migrated the file: Alembic cannot find the
    file's revision, and the master says so in one line instead of a traceback."""
    monkeypatch.setattr(database, "_migrated", None)  # this process has no master
    path = env["ITEMS_DB"]
    database.apply_migrations(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f0f0f0f0f0f0'")
    with pytest.raises(ConfigError) as refused:
        database.prepare_database(settings_from(env), 2, 1000)
    assert str(refused.value) == "ITEMS_DB: cannot be migrated (CommandError)"
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__
    # Its workers would migrate the file themselves, and fail the same way.
    assert database.migrates_itself(path)


# --- the file's mode -------------------------------------------------------------------------


def test_a_new_database_file_and_its_companions_are_private_whatever_the_umask(
    make_app: Callable[..., Flask], env: dict[str, str], keys: KeySet
) -> None:
    previous = os.umask(0)
    try:
        client = make_app().test_client()
        # A write while the connections are open: SQLite makes the -wal and -shm files.
        assert client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"}).status_code == 201
        path = env["ITEMS_DB"]
        companions = [path, f"{path}-wal", f"{path}-shm", f"{path}.migrate-lock"]
        assert {name: mode(name) for name in companions} == dict.fromkeys(companions, PRIVATE)
    finally:
        os.umask(previous)


@pytest.mark.parametrize(
    ("chosen", "warned"), [(0o644, True), (0o640, False)], ids=["world-readable", "group-readable"]
)
def test_an_existing_files_mode_is_kept_and_a_world_readable_one_is_warned_about(
    make_app: Callable[..., Flask],
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    chosen: int,
    warned: bool,
) -> None:
    path = Path(env["ITEMS_DB"])
    path.touch()
    path.chmod(chosen)
    make_app()
    assert mode(str(path)) == chosen
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ITEMS_DB")]
    assert len(warnings) == (1 if warned else 0), warnings


# --- the lock --------------------------------------------------------------------------------


def test_a_write_that_waits_too_long_for_the_lock_is_a_503(
    make_app: Callable[..., Flask], env: dict[str, str], keys: KeySet
) -> None:
    client = make_app(ITEMS_DB_BUSY_TIMEOUT="1").test_client()
    holder = hold_write_lock(env["ITEMS_DB"])
    try:
        response = client.post("/v1/items", headers=bearer(keys.writer), json={"name": "late"})
        listed = client.get("/v1/items", headers=bearer(keys.reader))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    assert listed.status_code == 200
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200


def test_another_sqlite_error_stays_a_500(
    client: FlaskClient, env: dict[str, str], keys: KeySet, databases: Databases
) -> None:
    databases.drop_items(env)
    response = client.get("/v1/items", headers=bearer(keys.reader))
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_reads_answer_while_a_write_waits_for_the_lock(
    make_app: Callable[..., Flask], env: dict[str, str], keys: KeySet
) -> None:
    """WAL lets a read go on beside a write that waits for the lock. It is also the probe of what
    the thread pool relies on: sqlite3 releases the GIL while SQLite waits, or this thread could
    not run until the write gave up, 10 s later."""
    app = make_app()
    items = app.extensions["stores"]["items"]
    items.add("acme", "before")
    holder = hold_write_lock(env["ITEMS_DB"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            waiting = pool.submit(items.add, "acme", "after")
            time.sleep(0.3)
            listed = app.test_client().get("/v1/items", headers=bearer(keys.reader))
            # Order, not a stopwatch: the read was answered while the write still waited.
            assert (listed.status_code, waiting.done()) == (200, False)
            assert [item["name"] for item in listed.get_json()["items"]] == ["before"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert waiting.result(timeout=30).name == "after"


def test_queued_writes_wait_one_budget_from_their_request_not_one_each_in_turn(
    make_app: Callable[..., Flask], env: dict[str, str]
) -> None:
    """Five writes of one worker queue behind the one that waits for SQLite's lock; each counts
    its 2 s budget from its own request, so all five are answered after about 2 s. Budgets
    served in turn would take 10 s: the bound sits between, with room for a loaded machine."""
    items = make_app(ITEMS_DB_BUSY_TIMEOUT="2").extensions["stores"]["items"]
    holder = hold_write_lock(env["ITEMS_DB"])
    try:
        with ThreadPoolExecutor(max_workers=5) as pool:
            started = time.monotonic()
            writes = [pool.submit(items.add, "acme", f"queued {n}") for n in range(5)]
            failures = [type(write.exception(timeout=30)) for write in writes]
            seconds = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert failures == [StoreUnavailable] * 5
    assert seconds < 6, seconds


# --- threads ---------------------------------------------------------------------------------


def test_without_gevent_a_call_runs_in_the_callers_own_thread(env: dict[str, str]) -> None:
    database.apply_migrations(env["ITEMS_DB"])
    database_ = Database(env["ITEMS_DB"])
    try:
        assert database_.read(lambda db: threading.get_ident()) == threading.get_ident()
    finally:
        database_.close()


GEVENT_WORKER = """\
from gevent import monkey

monkey.patch_all()  # as gunicorn's gevent worker does before it loads the app

import sys

from %(package)s.stores.connections import Database

native = monkey.get_original("threading", "get_ident")
database = Database(sys.argv[1])
print("off the loop:", database.read(lambda db: native()) != native())
print("wrote:", database.write(lambda db: db.execute("DELETE FROM items").rowcount))
database.close()
"""


def run_script(script: Path, source: str, items_db: str) -> subprocess.CompletedProcess[str]:
    """``source`` (for this package) run as a script of its own on ``items_db``; it must succeed."""
    script.write_text(source % {"package": "{{ cookiecutter.package_name }}"})
    result = subprocess.run(
        [sys.executable, str(script), items_db],
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_under_gevent_a_call_runs_in_a_native_thread_off_the_event_loop(
    env: dict[str, str], tmp_path: Path
) -> None:
    """In a process patched as gunicorn's gevent worker patches it, a call runs in a thread of
    the database's own pool, where SQLite may wait for its lock without stopping the loop."""
    database.apply_migrations(env["ITEMS_DB"])
    with sqlite3.connect(env["ITEMS_DB"]) as db:
        db.execute("INSERT INTO items VALUES ('1', 'acme', 'one', '2026-01-01')")
    result = run_script(tmp_path / "gevent_worker.py", GEVENT_WORKER, env["ITEMS_DB"])
    assert result.stdout.splitlines() == ["off the loop: True", "wrote: 1"], result.stdout


def until(done: Callable[[], bool]) -> None:
    """Let gevent's loop run until ``done()``; fails after a minute."""
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline
        gevent.sleep(0.01)


def test_under_gevent_a_call_hands_back_its_answer_or_its_own_error_and_then_its_connection() -> None:
    threads = _GeventThreads(2)
    given_back: list[str] = []
    try:
        assert threads.run(threading.get_ident, lambda: given_back.append("ident")) != threading.get_ident()
        assert given_back == ["ident"]
        assert threads.run(lambda: "answer", lambda: given_back.append("answer")) == "answer"
        error = sqlite3.OperationalError("no such table: items")

        def failing() -> None:
            raise error

        with pytest.raises(sqlite3.OperationalError) as raised:
            threads.run(failing, lambda: given_back.append("error"))
        assert raised.value is error
        assert given_back == ["ident", "answer", "error"]
    finally:
        threads.close()


def test_under_gevent_a_killed_callers_connection_goes_back_once_its_thread_is_done() -> None:
    """A stop past its grace period kills the greenlet, not the thread that still uses the
    connection."""
    threads = _GeventThreads(1)
    started, release = threading.Event(), threading.Event()
    given_back: list[str] = []

    def working() -> None:
        started.set()
        release.wait(60)

    try:
        first = gevent.spawn(threads.run, working, lambda: given_back.append("first"))
        until(started.is_set)
        first.kill()
        gevent.sleep(0.1)
        assert given_back == []  # the thread still works with the connection
        release.set()
        until(lambda: given_back == ["first"])
    finally:
        release.set()
        threads.close()


# --- a real gunicorn -------------------------------------------------------------------------


def call(
    server: Server,
    context: ssl.SSLContext,
    source: str,
    method: str,
    path: str,
    key: MintedKey | None = None,
    body: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], float]:
    """One request on a fresh TLS connection from ``source``: status, headers and seconds."""
    headers = {"Content-Type": "application/json", **(bearer(key) if key else {})}
    started = time.monotonic()
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=context, source_address=(source, 0), timeout=60
    )
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return response.status, dict(response.headers), time.monotonic() - started


HOLD = 6  # seconds another process holds the write lock
WRITES = 4  # queued behind it: four budgets of 2 s in turn would outlast the hold


@pytest.mark.slow
@pytest.mark.parametrize(
    ("budget", "answer"), [("20", 201), ("2", 503)], ids=["released-within-the-budget", "held-past-it"]
)
def test_a_held_write_lock_delays_writes_only(
    start_server: Callable[..., Server],
    env: dict[str, str],
    keys: KeySet,
    client_context: ssl.SSLContext,
    budget: str,
    answer: int,
) -> None:
    """One gevent worker. While another process holds SQLite's write lock, the worker's writes
    wait for it, and its other routes (item reads included: WAL) answer as usual."""
    server = start_server(ITEMS_DB_BUSY_TIMEOUT=budget, RATELIMIT_DEFAULT="100000 per minute")
    assert call(server, client_context, WRITER, "POST", "/v1/items", keys.writer, {"name": "first"})[0] == 201
    holder = hold_write_lock(env["ITEMS_DB"])
    probes: list[tuple[str, int, float]] = []
    post = partial(call, server, client_context, WRITER, "POST", "/v1/items", keys.writer, {"name": "w"})
    get = partial(call, server, client_context, CLIENT, "GET")
    routes = (("/healthz", None), ("/v1/whoami", keys.reader), ("/v1/items", keys.reader))
    with ThreadPoolExecutor(max_workers=WRITES) as pool:
        try:
            held_until = time.monotonic() + HOLD
            writes = [pool.submit(post) for _ in range(WRITES)]
            while time.monotonic() < held_until:
                for path, key in routes:
                    status, _, seconds = get(path, key)
                    probes.append((path, status, seconds))
            answered_while_held = [write.done() for write in writes]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        results = [write.result(timeout=60) for write in writes]
    slow = [probe for probe in probes if probe[1] != 200 or probe[2] >= 1]
    assert len(probes) >= 15, probes
    assert not slow, slow
    assert [status for status, _, _ in results] == [answer] * WRITES
    if answer == 503:
        # Each write counted its budget from its own request: all answered while the lock was held.
        assert answered_while_held == [True] * WRITES
        assert all(int(headers["Retry-After"]) > 0 for _, headers, _ in results)
    else:
        # They waited for the lock, and took it once it was free.
        assert answered_while_held == [False] * WRITES
    assert "Traceback" not in server.logs()


KILLED_CALLER = """\
from gevent import monkey

monkey.patch_all()  # as gunicorn's gevent worker does before it loads the app

import sqlite3
import sys

import gevent

from %(package)s.stores.connections import Database


def insert(name):
    return lambda db: db.execute("INSERT INTO items VALUES (?, 'acme', ?, '2026-01-01')", (name, name))


def insert_slowly(db):
    insert("first")(db)
    pause(1)  # its transaction still open: another call on this connection would now fail


pause = monkey.get_original("time", "sleep")
path = sys.argv[1]
database = Database(path, busy_timeout=30)
holder = sqlite3.connect(path, isolation_level=None)
holder.execute("BEGIN IMMEDIATE")
first = gevent.spawn(database.write, insert_slowly)
gevent.sleep(0.5)
first.kill()  # its thread still holds the writer connection, waiting for the lock
second = gevent.spawn(database.write, insert("second"))
gevent.sleep(0.5)
print("second waited:", not second.ready())
holder.execute("ROLLBACK")
second.get(timeout=20)
print("rows:", sorted(database.read(lambda db: [row[0] for row in db.execute("SELECT name FROM items")])))
"""


@pytest.mark.slow
def test_a_connection_goes_back_only_once_its_thread_is_done_even_if_the_caller_was_killed(
    make_app: Callable[..., Flask], env: dict[str, str], tmp_path: Path
) -> None:
    """Under gevent, a request killed while its thread waits for the lock (a stop past its grace
    period) does not free the writer connection for another call while that thread still uses
    it: the next write waits, then both writes land, and neither fails."""
    make_app()  # migrates the file
    result = run_script(tmp_path / "killed_caller.py", KILLED_CALLER, env["ITEMS_DB"])
    assert result.stdout.splitlines() == ["second waited: True", "rows: ['first', 'second']"], result.stdout


COUNTING_CONFIG = """\
import os
import runpy

import %(package)s.database as database

# The project's own configuration, with two additions for the test.
globals().update((k, v) for k, v in runpy.run_path(%(config)r).items() if not k.startswith("__"))
_run_migrations = database.run_migrations


def _counted(context):
    # Every migration (Alembic's env.py calls this) records the process that ran it.
    with open(%(runs)r, "a") as runs:
        runs.write(str(os.getpid()) + "\\n")
    _run_migrations(context)


database.run_migrations = _counted


def post_worker_init(worker):
    print("test: worker ready", flush=True)
"""


@pytest.mark.slow
def test_gunicorn_migrates_once_in_the_master_and_its_workers_do_not(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    runs = tmp_path / "migration-runs"
    config = tmp_path / "counting.conf.py"
    project_config = str(PROJECT / "gunicorn.conf.py")
    package = "{{ cookiecutter.package_name }}"
    config.write_text(COUNTING_CONFIG % {"package": package, "config": project_config, "runs": str(runs)})
    server = start_server("-c", str(config), "--workers", "2")
    deadline = time.monotonic() + 30
    while server.logs().count("test: worker ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.logs().count("test: worker ready") == 2, server.logs()
    assert runs.read_text().split() == [str(server.process.pid)]
