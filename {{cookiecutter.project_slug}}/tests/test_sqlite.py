"""SQLite: the service migrates its file itself at start (a file made before migrations is
adopted), ``alembic`` goes up and down from the project root, a file the service cannot migrate
stops gunicorn with one line, and a write that waits too long for the lock is a 503."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from {{ cookiecutter.package_name }} import store

from .support import PROJECT, KeySet, bearer, server_env


def tables_and_revision(path: str) -> tuple[set[str], list[tuple[str]]]:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return tables, revision


def test_the_service_migrates_a_new_file_at_start(
    make_app: Callable[..., Flask], env: dict[str, str]
) -> None:
    make_app()
    tables, revision = tables_and_revision(env["ITEMS_DB"])
    assert {"items", "alembic_version"} <= tables
    assert revision == [("0001",)]


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
    assert tables_and_revision(env["ITEMS_DB"])[1] == [("0001",)]


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
    assert tables_and_revision(path)[1] == [("0001",)]


def test_a_file_the_service_cannot_migrate_stops_gunicorn_with_one_line(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    unwritable = tmp_path / "a-file-not-a-directory"
    unwritable.write_text("")
    settings = {**env, "ITEMS_DB": str(unwritable / "items.sqlite3")}
    settings.update(TLS_CERT_FILE=str(tls_files[0]), TLS_KEY_FILE=str(tls_files[1]))
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn"],
        cwd=PROJECT,
        env=server_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "ITEMS_DB" in line]
    assert errors == ["error: ITEMS_DB: cannot be migrated (NotADirectoryError)"]
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), lines


def test_a_write_that_waits_too_long_for_the_lock_is_a_503(
    client, env: dict[str, str], keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "BUSY_SECONDS", 0.2)
    holder = sqlite3.connect(env["ITEMS_DB"], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = client.post("/v1/items", headers=bearer(keys.writer), json={"name": "late"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200
