"""PostgreSQL in-process: the URL and its password, the pool size, row-level security as the
second line of tenant isolation (CWE-639, API1:2023), the two roles (the owner migrates; the
service's role owns nothing and bypasses nothing, or the start is refused), migrations up, down
and from two hosts at once, alembic's one-line errors, the schema check at start, and 503 when
the server cannot be reached."""

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

from .database import PROBE_PASSWORD, Databases, local_postgres
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
    [
        "mysql://items:pw@db/items",
        "postgresql://items:pw@db",
        "postgresql://items:pw@db/",
        "postgresql://items:pw@db:port/items",
        "postgresql://items:pw@db:0/items",
        "postgresql://items:pw@db/it@ems",
        "items",
    ],
    ids=["scheme", "no-database", "only-a-slash", "port", "port-zero", "at-sign-in-the-path", "not-a-url"],
)
def test_a_database_url_libpq_cannot_use_is_named(env: dict[str, str], url: str) -> None:
    env["DATABASE_URL"] = url
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: ") as raised:
        settings_from(env)
    assert "pw" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://items:pw@db:1/items",
        "postgresql://items:pw@db/X",
        "postgresql://items:pw@db/items?application_name=a://b",
    ],
    ids=["port-one", "one-letter-database", "scheme-separator-in-the-query"],
)
def test_a_database_url_libpq_reads_as_written_is_taken_as_it_is(env: dict[str, str], url: str) -> None:
    env["DATABASE_URL"] = url
    assert settings_from(env).database.url == url


def test_a_password_in_the_query_is_not_shown_even_when_it_holds_a_question_mark(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = f"postgresql://items@db.internal/items?password={PASSWORD}?x&sslmode=require"
    shown = settings_from(env).describe()["DATABASE_URL"]
    assert shown == "postgresql://***@db.internal/items?password=***&sslmode=require"


def test_a_missing_database_url_is_named(env: dict[str, str]) -> None:
    del env["DATABASE_URL"]
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: not set"):
        settings_from(env)


def test_make_settings_shows_the_database_url_without_any_password(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = f"postgresql://items:{PASSWORD}@db.internal/items?sslmode=verify-full&password=also"
    shown = settings_from(env).describe()["DATABASE_URL"]
    assert shown == "postgresql://***@db.internal/items?sslmode=verify-full&password=***"


def test_make_settings_shows_the_migration_url_without_its_password(env: dict[str, str]) -> None:
    env["DATABASE_MIGRATION_URL"] = f"postgresql://items_owner:{PASSWORD}@db.internal/items"
    shown = settings_from(env).describe()
    assert shown["DATABASE_MIGRATION_URL"] == "postgresql://***@db.internal/items"
    assert PASSWORD not in str(shown)


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


def test_production_warns_when_the_service_holds_the_owners_url(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only alembic reads it: a service that has it could become the tables' owner."""
    production = {"APP_ENV": "production", "FORWARDED_ALLOW_IPS": "10.0.0.1"}
    owner = f"postgresql://items_owner:{PASSWORD}@127.0.0.1:{free_port()}/items"
    prepare_database(settings_from({**env, **production, "DATABASE_MIGRATION_URL": owner}), 1, 1000)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: DATABASE_MIGRATION_URL: the service never uses it")
    assert PASSWORD not in warning
    prepare_database(settings_from({**env, **production}), 1, 1000)
    assert capsys.readouterr().err == ""


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
    assert problem.startswith("its role is, or can become, a superuser")


# --- roles: the service's owns nothing and bypasses nothing ---------------------------------------


@pytest.mark.parametrize(
    ("statements", "refusal"),
    [
        (["ALTER TABLE items OWNER TO {role}"], "its role owns table items, or can become its owner"),
        (["GRANT items_owner TO {role}"], "its role owns table items, or can become its owner"),
        (
            ["ALTER DATABASE {database} OWNER TO {role}"],
            "its role owns the database, or can become its owner",
        ),
        (
            ["CREATE ROLE {role}_above NOLOGIN SUPERUSER", "GRANT {role}_above TO {role}"],
            "its role is, or can become, a superuser or a role with BYPASSRLS",
        ),
        (
            ["CREATE ROLE {role}_above NOLOGIN BYPASSRLS", "GRANT {role}_above TO {role}"],
            "its role is, or can become, a superuser or a role with BYPASSRLS",
        ),
        (
            ["ALTER ROLE {role} CREATEROLE"],
            "its role is, or can become, a superuser or a role with BYPASSRLS",
        ),
        (["GRANT SELECT, INSERT ON items TO {role}"], "its role cannot read alembic_version"),
        (
            [
                "GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {role}",
                "GRANT SELECT ON alembic_version TO {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON key_revocations TO {role}",
                "GRANT SELECT ON key_uses TO {role}",
            ],
            "its role cannot read and write key_uses",
        ),
    ],
    ids=[
        "owns-the-table",
        "member-of-the-owner",
        "owns-the-database",
        "member-of-a-superuser-role",
        "member-of-a-bypassrls-role",
        "createrole",
        "cannot-read-alembic-version",
        "cannot-write-key-records",
    ],
)
def test_a_role_that_row_level_security_would_not_bind_is_refused_at_start_in_one_line(
    role_env: Callable[..., dict[str, str]], statements: list[str], refusal: str
) -> None:
    problem = schema_problem(database_settings_from(role_env(*statements)))
    assert problem is not None
    assert problem.startswith(refusal)
    assert "\n" not in problem
    assert PROBE_PASSWORD not in problem


def test_a_role_with_only_the_services_privileges_is_accepted(
    role_env: Callable[..., dict[str, str]],
) -> None:
    env = role_env(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON items, key_revocations, key_uses TO {role}",
        "GRANT SELECT ON alembic_version TO {role}",
    )
    assert schema_problem(database_settings_from(env)) is None


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE items NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE items DISABLE ROW LEVEL SECURITY",
        "DROP POLICY items_of_the_current_tenant ON items",
        "TRUNCATE items",
        "CREATE TABLE copied (tenant text)",
        "CREATE TEMPORARY TABLE copied (tenant text)",
        "UPDATE alembic_version SET version_num = '0000'",
        "SET ROLE items_owner",
    ],
    ids=[
        "no-force",
        "disable",
        "drop-policy",
        "truncate",
        "create",
        "create-temporary",
        "alembic-version",
        "set-role",
    ],
)
def test_the_services_role_can_neither_lift_the_policy_nor_change_the_schema(
    env: dict[str, str], statement: str
) -> None:
    """TRUNCATE, which row-level security does not filter, and the version table's rows
    included: the service's role reads and writes rows of its tables, and does nothing else."""
    with psycopg.connect(env["DATABASE_URL"]) as service, pytest.raises(psycopg.errors.InsufficientPrivilege):
        service.execute(statement)


def test_a_table_a_later_migration_creates_is_usable_by_the_services_role_without_a_grant(
    databases: Databases,
) -> None:
    """The owner's default privileges: a resource's migration copied from the items one needs
    no GRANT of its own, and the version table stays the owner's to write. (A name no resource
    would take: `make resource` may have made any plural already.)"""
    env = databases.new()
    try:
        with psycopg.connect(databases.migrating(env)["DATABASE_MIGRATION_URL"], autocommit=True) as owner:
            owner.execute("CREATE TABLE later_table (id text PRIMARY KEY, tenant text NOT NULL)")
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as service:
            service.execute("INSERT INTO later_table VALUES ('o1', 'acme')")
            assert service.execute("SELECT tenant FROM later_table").fetchall() == [("acme",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                service.execute("TRUNCATE later_table")
    finally:
        databases.drop(env)


def test_the_services_role_reads_and_writes_the_key_records_without_a_tenant(env: dict[str, str]) -> None:
    """Revocations are the operator's: every worker reads every one of them whatever tenant its
    requests serve, so no tenant policy may hide them (a revoked key would be let in)."""
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as service:
        service.execute(
            "INSERT INTO key_revocations (key_id, reason, revoked_by, revoked_at)"
            " VALUES ('k1', NULL, 'cli', now())"
        )
        service.execute("INSERT INTO key_uses (key_id, last_used) VALUES ('k1', now())")
        service.execute("UPDATE key_uses SET last_used = now() WHERE key_id = 'k1'")
        assert service.execute("SELECT key_id FROM key_revocations").fetchall() == [("k1",)]
        service.execute("DELETE FROM key_revocations WHERE key_id = 'k1'")
        service.execute("DELETE FROM key_uses WHERE key_id = 'k1'")


def test_no_request_can_choose_the_tenant_its_transaction_reads(
    client, keys: KeySet, env: dict[str, str], databases: Databases
) -> None:
    """``app.tenant`` comes from the key alone: no parameter, header or field a client sends
    reaches it (the service's role could set it in SQL: see the threat model, T41)."""
    theirs = client.post("/v1/items", headers=bearer(keys.other_tenant), json={"name": "theirs"}).get_json()
    chosen = {"X-Tenant": "globex", "App-Tenant": "globex", "X-App-Tenant": "globex"}
    headers = {**bearer(keys.writer), **chosen}
    query = "?tenant=globex&app.tenant=globex"
    assert client.get(f"/v1/items/{theirs['id']}{query}", headers=headers).status_code == 404
    assert client.get(f"/v1/items{query}", headers=headers).get_json()["items"] == []
    made = client.post(
        f"/v1/items{query}", headers=headers, json={"name": "mine", "tenant": "globex"}
    ).get_json()
    with databases.superuser(env) as admin:
        assert admin.execute("SELECT tenant FROM items WHERE id = %s", (made["id"],)).fetchone() == ("acme",)


# --- migrations ------------------------------------------------------------------------------------


def test_migrations_go_up_and_down(databases: Databases) -> None:
    env = databases.new(migrated=False)
    table = "SELECT to_regclass('items') IS NOT NULL"
    try:
        assert "Running upgrade  -> 0001" in finished(alembic(databases.migrating(env), "upgrade", "head"))
        with databases.superuser(env) as admin:
            assert admin.execute(table).fetchone() == (True,)
        finished(alembic(databases.migrating(env), "downgrade", "base"))
        with databases.superuser(env) as admin:
            assert admin.execute(table).fetchone() == (False,)
        finished(alembic(databases.migrating(env), "upgrade", "head"))
        assert schema_problem(database_settings_from(env)) is None
    finally:
        databases.drop(env)


def test_two_upgrades_at_once_wait_for_each_other_and_both_succeed(databases: Databases) -> None:
    env = databases.new(migrated=False)
    try:
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as holder:
            # Hold the migration lock, as a third host in the middle of its upgrade would.
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            runs = [alembic(databases.migrating(env), "upgrade", "head") for _ in range(2)]
            time.sleep(3)
            assert [run.poll() for run in runs] == [None, None], "an upgrade did not wait for the lock"
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            outputs = [finished(run) for run in runs]
        assert sum("Running upgrade  -> 0001" in output for output in outputs) == 1
        assert schema_problem(database_settings_from(env)) is None
    finally:
        databases.drop(env)


def test_alembic_that_cannot_connect_names_the_variable_without_quoting_the_url(databases: Databases) -> None:
    env = databases.migrating(databases.new(migrated=False))
    try:
        env["DATABASE_MIGRATION_URL"] = env["DATABASE_MIGRATION_URL"].replace(
            databases.cluster.passwords[local_postgres.OWNER_ROLE], PASSWORD
        )
        run = alembic(env, "upgrade", "head")
        output, _ = run.communicate(timeout=120)
    finally:
        databases.drop(env)
    assert run.returncode != 0
    assert output.strip().splitlines() == [
        "error: DATABASE_MIGRATION_URL: cannot connect: no answer within DATABASE_CONNECT_TIMEOUT (2 s), "
        "or the server refused the role, its password or the database"
    ]


def test_migrating_as_the_services_role_is_refused_in_one_line(databases: Databases) -> None:
    """Without DATABASE_MIGRATION_URL, alembic says it falls back to DATABASE_URL, whose role (the
    service's) cannot create a table: one line, before any migration starts."""
    env = databases.new(migrated=False)
    try:
        run = alembic(env, "upgrade", "head")
        output, _ = run.communicate(timeout=120)
    finally:
        databases.drop(env)
    lines = output.strip().splitlines()
    assert run.returncode != 0
    assert lines[0].startswith("note: DATABASE_MIGRATION_URL is not set: migrating as DATABASE_URL's role")
    assert lines[1:] == [
        "error: DATABASE_URL: its role cannot create tables: "
        "migrate as the tables' owner (DATABASE_MIGRATION_URL)"
    ], output


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


def test_the_documented_compose_and_make_db_roles_are_the_same() -> None:
    """One set of statements in three places: what an administrator runs (docs/operations.md), what the
    compose server runs at its first start, and what make db and the tests run."""

    def statements(text: str) -> str:
        return " ".join(text.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0].split())

    documented = statements((PROJECT / "docs" / "operations.md").read_text())
    initdb = statements((PROJECT / "compose" / "initdb.sh").read_text())
    assert documented == initdb
    for statement, roles in local_postgres.PRIVILEGES:
        assert " ".join(statement.format(*roles).split()) + ";" in initdb


def test_make_db_runs_the_local_server_script() -> None:
    commands = subprocess.run(
        ["make", "--no-print-directory", "-n", "db", "db-stop", "DB_PORT=5433", f"PYTHON={sys.executable}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert commands.stdout.splitlines() == [
        f"{sys.executable} scripts/local_postgres.py up --port 5433",
        f"{sys.executable} scripts/local_postgres.py down",
    ]


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
