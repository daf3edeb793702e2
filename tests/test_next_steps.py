"""The steps printed after a bake work as printed, in the order printed, for the bake made."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from .conftest import TEMPLATE


def bake_and_read_steps(tmp_path: Path, capfd: pytest.CaptureFixture[str], database: str) -> tuple[Path, str]:
    project = Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(tmp_path), extra_context={"database": database}
        )
    )
    return project, capfd.readouterr().out


def steps(printed: str) -> list[str]:
    return [
        line.split("#")[0].strip()
        for line in printed.split("Next steps:\n", 1)[1].splitlines()
        if line.strip()
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_every_make_step_is_a_target_of_the_bake(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], database: str
) -> None:
    project, printed = bake_and_read_steps(tmp_path, capfd, database)
    targets = [step.split()[1] for step in steps(printed) if step.startswith("make ")]
    assert targets, printed
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=project, capture_output=True, text=True, check=False)
        assert dry.returncode == 0, f"make {target}: {dry.stderr}"
    assert ("db" in targets) == (database == "postgresql"), targets


def test_the_repository_exists_before_the_hooks_and_the_fast_tests_come_first(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, printed = bake_and_read_steps(tmp_path, capfd, "sqlite")
    listed = steps(printed)
    assert listed.index("git init") < listed.index("make hooks"), listed
    assert "make test-fast" in listed and "make test" not in listed, listed


def test_the_curl_step_carries_the_development_key(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _, printed = bake_and_read_steps(tmp_path, capfd, "sqlite")
    key = re.search(r"Development key .*\n\s+(\S+)", printed)
    assert key is not None and key.group(1).startswith("acme_"), printed
    curl = [step for step in steps(printed) if step.startswith("curl ")]
    assert curl == [
        f'curl --cacert .dev/localhost.pem -H "Authorization: Bearer {key.group(1)}" '
        "https://localhost:8443/v1/whoami"
    ], printed


def test_make_demo_installs_the_bakes_runtime_lock_not_the_template_toolchain() -> None:
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=TEMPLATE, capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in dry.splitlines() if "pip install" in line]
    assert not any("-r tests/requirements.txt" in line for line in installs), installs
    assert any("--require-hashes -r requirements.txt" in line for line in installs), installs


def test_make_demo_ends_with_a_curl_command_not_a_placeholder() -> None:
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=TEMPLATE, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r'curl --cacert \.dev/localhost\.pem -H \\?"Authorization: Bearer \$\$?key', dry), dry
    assert "<the curl command" not in dry, dry
