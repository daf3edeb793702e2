"""The generated threat model is checked by its own test: it passes on a bake, and it fails as
soon as a row names a test or a function that does not exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import Bake, python, run_in

TABLE_TEST = ("-m", "pytest", "tests/test_threat_model.py", "-q", "-p", "no:cacheprovider")
# Both appear in rows of the generated docs/threat-model.md.
REAL_TEST = "tests/test_auth.py::test_key_in_the_url_is_refused_and_never_used"
REAL_METHOD = "src/acme_widgets_api/keys/ring.py::KeyRing.verify"


@pytest.fixture
def project(bake: Bake) -> Path:
    return bake()


def run_table_test(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python(*TABLE_TEST), cwd=project, capture_output=True, text=True, timeout=300, check=False
    )


def edit_row(project: Path, old: str, new: str) -> None:
    doc = project / "docs" / "threat-model.md"
    text = doc.read_text(encoding="utf-8")
    assert f"`{old}`" in text, f"the threat model no longer names {old}"
    doc.write_text(text.replace(f"`{old}`", f"`{new}`", 1), encoding="utf-8")


def test_table_test_passes_on_a_bake_and_fails_on_a_row_naming_what_does_not_exist(project: Path) -> None:
    run_in(project, *python(*TABLE_TEST))
    original = (project / "docs" / "threat-model.md").read_text(encoding="utf-8")

    edit_row(project, REAL_TEST, "tests/test_auth.py::test_that_nobody_ever_wrote")
    result = run_table_test(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_that_nobody_ever_wrote" in result.stdout
    assert "does not collect" in result.stdout

    (project / "docs" / "threat-model.md").write_text(original, encoding="utf-8")
    edit_row(project, REAL_METHOD, "src/acme_widgets_api/keys/ring.py::KeyRing.verify_somehow")
    result = run_table_test(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "KeyRing.verify_somehow is not defined" in result.stdout
