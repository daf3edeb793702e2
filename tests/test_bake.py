"""Bake the template with every combination of choices and prove each result works."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import TEMPLATE, Bake, python, run_in

# `${{ ... }}` is GitHub Actions' own expression syntax (the workflow is copied unrendered).
LEFTOVER_SYNTAX = re.compile(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.")
CHOICES = {"container": ("yes", "no"), "github_actions": ("yes", "no")}
OPTIONAL_FILES = {"container": ("Dockerfile", ".dockerignore"), "github_actions": (".github",)}
COMBINATIONS = [dict(zip(CHOICES, values, strict=True)) for values in itertools.product(*CHOICES.values())]


def combination_id(context: dict[str, str]) -> str:
    return "-".join(f"{name}={value}" for name, value in context.items())


def text_files(project: Path) -> list[Path]:
    return [p for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_default_bake_derives_every_name(default_bake: Path) -> None:
    assert default_bake.name == "acme-widgets-api"
    assert (default_bake / "src" / "acme_widgets_api" / "keys.py").is_file()
    assert 'KEY_PREFIX = "acme"' in (default_bake / "src/acme_widgets_api/keys.py").read_text()
    assert (
        tomllib.loads((default_bake / "pyproject.toml").read_text())["project"]["name"] == "acme-widgets-api"
    )


def test_custom_project_name_derives_slug_package_and_prefix(bake: Bake) -> None:
    project = bake(project_name="Globex Billing Service")
    assert project.name == "globex-billing-service"
    assert (project / "src" / "globex_billing_service" / "app.py").is_file()
    assert 'KEY_PREFIX = "globex"' in (project / "src/globex_billing_service/keys.py").read_text()
    assert (project / ".env").read_text().count("sha256=") == 1


@pytest.mark.parametrize("context", COMBINATIONS, ids=combination_id)
def test_every_combination_bakes_lints_and_passes_its_fast_suite(bake: Bake, context: dict[str, str]) -> None:
    project = bake(**context)
    for path in text_files(project):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not LEFTOVER_SYNTAX.search(text), f"template syntax left in {path.relative_to(project)}"
    for option, paths in OPTIONAL_FILES.items():
        for name in paths:
            assert (project / name).exists() == (context[option] == "yes"), name
    run_in(project, *python("-m", "ruff", "check", "."))
    run_in(project, *python("-m", "ruff", "format", "--check", "."))
    run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"))


@pytest.mark.parametrize("project_name", ["Acme Widgets API", "Globex Billing Service"])
def test_full_generated_suite_passes_with_real_processes(bake: Bake, project_name: str) -> None:
    project = bake(project_name=project_name)
    output = run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider"))
    assert " passed" in output and "skipped" not in output, output[-2000:]


def test_generated_package_type_checks(default_bake: Path) -> None:
    run_in(default_bake, *python("-m", "mypy"))


def test_every_bake_gets_its_own_development_key(bake: Bake) -> None:
    digests = set()
    for name in ("One Api", "Two Api"):
        env = (bake(project_name=name) / ".env").read_text().splitlines()
        assert "APP_ENV=development" in env
        (entry,) = [line for line in env if line.startswith("API_KEYS=")]
        digests.add(entry.rsplit("sha256=", 1)[1])
    assert len(digests) == 2


def test_post_gen_hook_prints_the_key_once_and_stores_only_its_digest(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(TEMPLATE), "--no-input", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = re.search(r"\bacme_[0-9A-Za-z]{49}\b", result.stdout)
    assert key is not None
    assert result.stdout.count(key.group(0)) == 2  # the key line and the ready-to-run curl line
    env = (tmp_path / "acme-widgets-api" / ".env").read_text()
    assert key.group(0) not in env and "sha256=" in env


def test_dot_env_and_dev_files_are_ignored_by_git(default_bake: Path, tmp_path: Path) -> None:
    project = shutil.copytree(default_bake, tmp_path / "project")
    (project / ".dev").mkdir(exist_ok=True)
    (project / ".dev" / "localhost-key.pem").write_text("not a real key")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for path in (".env", ".dev/localhost-key.pem"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=project, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
    tracked = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=project, check=False)
    assert tracked.returncode == 1


def test_gunicorn_without_api_keys_exits_naming_it(default_bake: Path) -> None:
    result = subprocess.run(
        python("-m", "gunicorn"),
        cwd=default_bake,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(default_bake / "src")},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: API_KEYS: not set: add the entry printed by 'keys new'"
    ]


def test_template_requirements_cover_every_generated_dependency(default_bake: Path) -> None:
    project = tomllib.loads((default_bake / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    have = (TEMPLATE / "tests" / "requirements.txt").read_text()
    for requirement in wanted:
        assert requirement in have, f"tests/requirements.txt lacks {requirement}"


def bench(name: str, project: Path, *args: str) -> tuple[str, ...]:
    """A script of the template's bench/, measuring ``project``."""
    return python(str(TEMPLATE / "bench" / name), "--project", str(project), *args)


def test_key_verification_does_not_grow_with_the_number_of_keys(default_bake: Path) -> None:
    """Runs bench/bench_keys.py on a bake. Its figures are printed, not timed; only a gross
    failure (a linear scan would make 5,000 keys thousands of times slower) fails this test."""
    output = run_in(default_bake, *bench("bench_keys.py", default_bake))
    print(output)
    ratios = dict(re.findall(r"^(5,000 keys / 1 key, \w+):\s+([\d.]+)$", output, flags=re.MULTILINE))
    assert len(ratios) == 2
    assert all(float(ratio) < 3 for ratio in ratios.values()), output


def test_log_masking_costs_a_small_part_of_a_request(default_bake: Path) -> None:
    """Runs bench/bench_log_filter.py on a bake; figures are printed, and only a gross regression
    fails."""
    output = run_in(default_bake, *bench("bench_log_filter.py", default_bake))
    print(output)
    share = re.search(r"request line masking / request: ([\d.]+)%", output)
    assert share is not None, output
    assert float(share.group(1)) < 25, output


def test_stack_benchmark_runs_against_bare_flask(default_bake: Path) -> None:
    """Runs bench/inprocess.py on a bake (the service, the seed-style stack and bare Flask in one
    process): printed figures; fails only if it breaks or the service becomes grossly slower."""
    output = run_in(default_bake, *bench("inprocess.py", default_bake, "--requests", "1000", "--rounds", "2"))
    print(output)
    ratios = re.findall(r"^service .* \(([\d.]+) of bare\)$", output, flags=re.MULTILINE)
    assert len(ratios) == 2
    assert all(float(ratio) > 0.1 for ratio in ratios), output
