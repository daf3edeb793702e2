"""The generated Makefile's targets do what their help says on a fresh bake, and fail helpfully."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Bake


def make(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *args, f"PYTHON={sys.executable}"],
        cwd=project,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def copy_of(project: Path, destination: Path, *names: str) -> Path:
    destination.mkdir()
    for name in names:
        shutil.copy(project / name, destination / name)
    return destination


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_make_settings_reads_dot_env_in_a_fresh_bake_and_prints_no_digest(bake: Bake, database: str) -> None:
    project = bake(database=database)
    status, output = make(project, "settings", env={"PYTHONPATH": "src"})
    assert status == 0, output
    assert '"id": "dev"' in output, output
    digest = re.search(r"sha256=([0-9a-f]{64})", (project / ".env").read_text()).group(1)  # type: ignore[union-attr]
    assert digest not in output and "sha256" not in output, output


def test_make_audit_names_an_unreachable_advisory_service_and_another_source(default_bake: Path) -> None:
    # A proxy on a closed port: no advisory service can be reached, wherever this runs.
    closed = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    status, output = make(default_bake, "audit", env=closed)
    assert status != 0, output
    assert "advisory service (pypi) could not be reached" in output, output
    assert "AUDIT_SERVICE=osv" in output and "Traceback" not in output, output


def test_make_sbom_writes_the_sbom_without_a_warning(default_bake: Path, tmp_path: Path) -> None:
    project = copy_of(default_bake, tmp_path / "p", "Makefile", "pyproject.toml", "requirements.txt")
    status, output = make(project, "sbom")
    assert status == 0, output
    assert (project / "sbom.cdx.json").stat().st_size > 0
    assert "Warning: " not in output, output


def test_make_lock_check_leaves_no_scratch_directory_when_it_fails(
    default_bake: Path, tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        ["make", "--no-print-directory", "lock-check", "PYTHON=false"],
        cwd=default_bake,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert list(scratch.iterdir()) == []


def test_make_format_formats_even_when_a_lint_error_remains(default_bake: Path, tmp_path: Path) -> None:
    project = copy_of(default_bake, tmp_path / "p", "Makefile", "pyproject.toml")
    source = project / "src" / "leftover.py"
    source.parent.mkdir()
    # eval of input: a lint error that no fix mends; the spacing is the formatter's to fix.
    source.write_text("x  =  eval(input())\n")
    status, output = make(project, "format")
    assert status != 0, output
    assert source.read_text() == "x = eval(input())\n", output
