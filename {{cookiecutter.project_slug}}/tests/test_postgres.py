"""PostgreSQL in-process: the URL and its password, the pool size, row-level security as the
second line of tenant isolation (CWE-639, API1:2023), migrations up, down and from two hosts at
once, the schema check at start, and 503 when the server cannot be reached."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from flask import Flask

from {{ cookiecutter.package_name }}.database import MIGRATION_LOCK, pool_size, prepare_database, schema_problem
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.settings import ConfigError, database_settings_from, settings_from

from .database import Databases
from .support import PROJECT, KeySet, bearer, free_port

PASSWORD = "s3cret-Passw0rd"


def alembic(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``alembic`` from the project root, as an operator runs it, with only the database's variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return output


# --- DATABASE_URL ------------------------------------------------------------------------------


@pytest.mark.parametrize("character", ["#", "/", "?", "@", "["])
def test_a_password_the_driver_would_misread_stops_the_start_without_echoing_it(
    env: dict[str, str], character: str
) -> None:
    env["DATABASE_URL"] = f"postgresql://items:{PASSWORD}{character}x1@127.0.0.1:5432/items"
    with pytest.raises(ConfigError) as raised:
        settings_from(env)
    assert str(raised.value).startswith("DATABASE_URL: ")
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    ["mysql://items:pw@db/items", "postgresql://items:pw@db", "postgresql://items:pw@db:port/items", "items"],
    ids=["scheme", "no-database", "port", "not-a-url"],
)
def test_a_database_url_libpq_cannot_use_is_named(env: dict[str, str], url: str) -> None:
    env["DATABASE_URL"] = url
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: ") as raised:
        settings_from(env)
    assert "pw" not in str(raised.value)


def test_a_missing_database_url_is_named(env: dict[str, str]) -> None:
    del env["DATABASE_URL"]
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: not set"):
        settings_from(env)


def test_make_settings_shows_the_database_url_without_any_password(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = f"postgresql://items:{PASSWORD}@db.internal/items?sslmode=verify-full&password=also"
    shown = settings_from(env).describe()["DATABASE_URL"]
    assert shown == "postgresql://***@db.internal/items?sslmode=verify-full&password=***"


def test_make_settings_prints_no_password(env: dict[str, str], tmp_path: Path) -> None:
    secret_file = tmp_path / "database-url"
    secret_file.write_text(f"postgresql://items:{PASSWORD}@127.0.0.1:5432/items\n")
    environ = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    environ.update(PATH="/usr/bin:/bin", PYTHONPATH=str(PROJECT / "src"), DATABASE_URL_FILE=str(secret_file))
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}.settings"],
        cwd=PROJECT,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"DATABASE_URL": "postgresql://***@127.0.0.1:5432/items"' in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


# --- the pool ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "workers", "connections", "size"),
    [(10, 1, 1000, 10), (10, 4, 1000, 2), (100, 2, 20, 20), (3, 3, 1000, 1)],
    ids=["one-worker", "shared", "capped-by-worker-connections", "one-each"],
)
def test_each_worker_gets_its_share_of_the_hosts_connections(
    budget: int, workers: int, connections: int, size: int
) -> None:
    assert pool_size(budget, workers, connections) == size


def test_fewer_connections_than_workers_stop_the_start(env: dict[str, str]) -> None:
    settings = settings_from({**env, "DATABASE_MAX_CONNECTIONS": "2"})
    with pytest.raises(ConfigError, match=r"^DATABASE_MAX_CONNECTIONS: is below the 3 workers"):
        prepare_database(settings, 3, 1000)


def test_production_warns_about_a_remote_server_without_verify_full(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    remote = {"APP_ENV": "production", "FORWARDED_ALLOW_IPS": "10.0.0.1", "DATABASE_CONNECT_TIMEOUT": "2"}
    settings = settings_from(
        {**env, **remote, "DATABASE_URL": f"postgresql://items:{PASSWORD}@db.invalid/items"}
    )
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: cannot connect: no answer within"):
        prepare_database(settings, 1, 1000)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: DATABASE_URL: without sslmode=verify-full")
    assert PASSWORD not in warning
    verified = f"postgresql://items:{PASSWORD}@db.invalid/items?sslmode=verify-full"
    with pytest.raises(ConfigError):
        prepare_database(settings_from({**env, **remote, "DATABASE_URL": verified}), 1, 1000)
    assert capsys.readouterr().err == ""


# --- row-level security --------------------------------------------------------------------------


def test_the_services_role_without_a_tenant_sees_no_rows(
    client, keys: KeySet, env: dict[str, str], databases: Databases
) -> None:
    for key in (keys.writer, keys.other_tenant):
        assert client.post("/v1/items", headers=bearer(key), json={"name": "w"}).status_code == 201
    with databases.superuser(env) as admin:
        assert admin.execute("SELECT count(*) FROM items").fetchone() == (2,)
    with psycopg.connect(env["DATABASE_URL"]) as service:
        assert service.execute("SELECT count(*) FROM items").fetchone() == (0,)
        assert service.execute("SELECT count(*) FROM items WHERE tenant = 'acme'").fetchone() == (0,)


def test_a_query_that_forgets_the_tenant_sees_only_the_current_tenants_rows(
    client, keys: KeySet, env: dict[str, str]
) -> None:
    for key in (keys.writer, keys.other_tenant, keys.other_tenant):
        client.post("/v1/items", headers=bearer(key), json={"name": "w"})
    with psycopg.connect(env["DATABASE_URL"]) as service:
        service.execute("SELECT set_config('app.tenant', 'acme', true)")
        assert service.execute("SELECT DISTINCT tenant FROM items").fetchall() == [("acme",)]
        service.commit()
        # The setting ended with its transaction: the next one sees nothing again.
        assert service.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_a_row_for_another_tenant_cannot_be_written(env: dict[str, str]) -> None:
    with psycopg.connect(env["DATABASE_URL"]) as service:
        service.execute("SELECT set_config('app.tenant', 'acme', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            service.execute(
                "INSERT INTO items (id, tenant, name, created_at) VALUES ('x', 'globex', 'n', now())"
            )


def test_row_level_security_is_enabled_and_forced_on_items(env: dict[str, str]) -> None:
    with psycopg.connect(env["DATABASE_URL"]) as service:
        flags = "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'items'"
        assert service.execute(flags).fetchone() == (True, True)


def test_a_role_that_bypasses_row_level_security_is_refused_at_start(
    env: dict[str, str], databases: Databases
) -> None:
    superuser = databases.cluster.superuser_url(env["DATABASE_URL"].rsplit("/", 1)[1])
    problem = schema_problem(settings_from({**env, "DATABASE_URL": superuser}).database)
    assert problem is not None
    assert "bypasses row-level security" in problem


# --- migrations ------------------------------------------------------------------------------------


def test_migrations_go_up_and_down(databases: Databases) -> None:
    env = databases.new(migrated=False)
    table = "SELECT to_regclass('items') IS NOT NULL"
    try:
        assert "Running upgrade  -> 0001" in finished(alembic(env, "upgrade", "head"))
        with databases.superuser(env) as admin:
            assert admin.execute(table).fetchone() == (True,)
        finished(alembic(env, "downgrade", "base"))
        with databases.superuser(env) as admin:
            assert admin.execute(table).fetchone() == (False,)
        finished(alembic(env, "upgrade", "head"))
        assert schema_problem(database_settings_from(env)) is None
    finally:
        databases.drop(env)


def test_two_upgrades_at_once_wait_for_each_other_and_both_succeed(databases: Databases) -> None:
    env = databases.new(migrated=False)
    try:
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as holder:
            # Hold the migration lock, as a third host in the middle of its upgrade would.
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            runs = [alembic(env, "upgrade", "head") for _ in range(2)]
            time.sleep(3)
            assert [run.poll() for run in runs] == [None, None], "an upgrade did not wait for the lock"
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            outputs = [finished(run) for run in runs]
        assert sum("Running upgrade  -> 0001" in output for output in outputs) == 1
        assert schema_problem(database_settings_from(env)) is None
    finally:
        databases.drop(env)


@pytest.mark.parametrize("wrong", ["password", "database"])
def test_a_refused_connection_is_named_without_quoting_the_url(
    env: dict[str, str], databases: Databases, wrong: str
) -> None:
    url = env["DATABASE_URL"]
    if wrong == "password":
        url = url.replace(databases.cluster.service_password, PASSWORD)
    else:
        url = url.rsplit("/", 1)[0] + "/no_such_database"
    problem = schema_problem(database_settings_from({"DATABASE_URL": url}))
    assert problem is not None
    assert problem.startswith("cannot connect: ")
    assert not any(part in problem for part in (PASSWORD, "items_service", "no_such_database", "127.0.0.1"))


def test_the_schema_check_names_alembic_upgrade_head_for_an_empty_database(databases: Databases) -> None:
    env = databases.new(migrated=False)
    try:
        assert schema_problem(database_settings_from(env)) == (
            "the database has no schema yet: run `alembic upgrade head`"
        )
    finally:
        databases.drop(env)


def test_the_schema_check_refuses_a_revision_this_code_does_not_know(databases: Databases) -> None:
    env = databases.new()
    try:
        with databases.superuser(env) as admin:
            admin.execute("UPDATE alembic_version SET version_num = 'ffff'")
        assert schema_problem(database_settings_from(env)) == (
            "the database schema is newer than this code: deploy the release that migrated it"
        )
    finally:
        databases.drop(env)


# --- outage ----------------------------------------------------------------------------------------


def test_item_routes_answer_503_with_retry_after_in_time_when_no_server_answers(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app(DATABASE_URL=f"postgresql://items:pw@127.0.0.1:{free_port()}/items")
    client = app.test_client()
    for method, path in (("GET", "/v1/items"), ("POST", "/v1/items"), ("GET", "/v1/items/abc")):
        started = time.monotonic()
        response = client.open(path, method=method, headers=bearer(keys.writer), json={"name": "n"})
        assert time.monotonic() - started < 2 + 1  # DATABASE_CONNECT_TIMEOUT, and a margin
        assert response.status_code == 503
        assert response.content_type == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0
    # A worker that never read the revocations lets no key in (test_key_records.py has the rest:
    # one that read them before the outage serves every route that needs no database).
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 503
    assert client.get("/healthz").status_code == 200


def test_the_pool_and_the_outage_are_in_the_metrics(make_app: Callable[..., Flask], keys: KeySet) -> None:
    """After a request its connection is back in the pool; a 503 counts as an outage."""
    scraper = mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"])
    env = {"API_KEYS": f"{keys.entries},{scraper.entry}"}
    client = make_app(**env).test_client()
    assert client.get("/v1/items", headers=bearer(keys.reader)).status_code == 200
    text = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    assert float(sample(text, r'api_database_pool\{state="idle"\}')) >= 1
    before = float(sample(text, "api_database_unavailable_total"))
    down = make_app(DATABASE_URL=f"postgresql://items:pw@127.0.0.1:{free_port()}/items", **env).test_client()
    assert down.get("/v1/items", headers=bearer(keys.reader)).status_code == 503
    # Scraped through the app that reaches its database: the series are the process's.
    after = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    assert float(sample(after, "api_database_unavailable_total")) == before + 1


def sample(text: str, name: str) -> str:
    found = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
    assert found, text
    return found.group(1)
