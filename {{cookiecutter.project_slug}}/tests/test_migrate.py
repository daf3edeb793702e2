"""`make migrate` and `alembic upgrade head`: they read the service's settings (``.env`` only in
development, as the service does), and a database setting they cannot use stops them with the
service's one line naming the variable, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .database import UNUSABLE_DATABASE, Databases
from .support import PROJECT

ALEMBIC = [sys.executable, "-m", "alembic"]


def bare_env(**variables: str) -> dict[str, str]:
    """Nothing of the caller's environment: no database variable, no APP_ENV."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT / "src"), **variables}


def test_make_migrate_is_alembic_upgrade_head_in_development() -> None:
    result = subprocess.run(
        ["make", "-n", "migrate", f"PYTHON={sys.executable}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"APP_ENV=development {sys.executable} -m alembic upgrade head"


def test_alembic_with_a_database_setting_it_cannot_use_prints_one_line_naming_it() -> None:
    variables, variable = UNUSABLE_DATABASE
    result = subprocess.run(
        [*ALEMBIC, "upgrade", "head"],
        cwd=PROJECT,
        env=bare_env(**variables),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    lines = output.strip().splitlines()
    assert result.returncode != 0
    assert lines[0].startswith(f"error: {variable}: "), output
    assert len(lines) <= 3, output
    assert "Traceback" not in output


def test_make_migrate_migrates_the_database_that_dot_env_names(databases: Databases, tmp_path: Path) -> None:
    """In a directory of its own (this project's .env stays as it is): .env names the database,
    and is read because make migrate sets APP_ENV=development, as make run does."""
    for name in ("Makefile", "alembic.ini"):
        shutil.copy(PROJECT / name, tmp_path)
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in databases.empty().items()))
    subprocess.run(
        ["make", "migrate", f"PYTHON={sys.executable}"],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    def current(**variables: str) -> str:
        found = subprocess.run(
            [*ALEMBIC, "current"],
            cwd=tmp_path,
            env=bare_env(**variables),
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout + found.stderr

    assert "(head)" in current(APP_ENV="development")
    # Outside development, .env is not read: not the database it names.
    assert "(head)" not in current()
