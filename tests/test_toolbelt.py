"""The generated project's toolbelt, checked on real bakes with the tools a team will run:
zizmor and the workflow schema, hadolint, the OpenAPI validator, bandit, `make lint`, the
secret-scanning pre-commit hook, and cruft. Each tool is also shown a broken input, to prove
that it really looks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import TEMPLATE, Bake, python, run_in

BIN = Path(sys.executable).parent
WORKFLOW = ".github/workflows/ci.yml"
DOCUMENT = "docs/openapi.json"
MAKE_VERBS = ("install", "lock", "test", "lint", "run", "cert", "key", "audit", "sbom", "mutate", "openapi")
# Files a build may copy into the image; everything else stays out of every layer.
IMAGE_INPUTS = {"requirements.txt", "src", "gunicorn.conf.py", "alembic.ini"}


def tool(name: str) -> str:
    """A command-line tool installed next to this interpreter (tests/requirements.txt)."""
    path = BIN / name
    assert path.exists(), f"{name} is missing: python -m pip install -r tests/requirements.txt"
    return str(path)


def attempt(project: Path, *command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command that may fail; return its exit status and all of its output."""
    result = subprocess.run(
        command,
        cwd=project,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def broken_copy(source: Path, destination: Path, old: str, new: str) -> Path:
    text = source.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {source.name}: update this test"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text.replace(old, new, 1), encoding="utf-8")
    return destination


# The workflow ---------------------------------------------------------------------------


def test_workflow_passes_zizmor_offline(default_bake: Path) -> None:
    output = run_in(default_bake, tool("zizmor"), "--offline", WORKFLOW)
    assert "No findings" in output, output


def test_zizmor_flags_an_action_pinned_by_tag(default_bake: Path, tmp_path: Path) -> None:
    workflow = default_bake / WORKFLOW
    sha = re.search(r"actions/checkout@([0-9a-f]{40})", workflow.read_text()).group(1)  # type: ignore[union-attr]
    broken = broken_copy(workflow, tmp_path / WORKFLOW, f"checkout@{sha}", "checkout@v4")
    status, output = attempt(tmp_path, tool("zizmor"), "--offline", str(broken))
    assert status != 0 and "unpinned-uses" in output, output


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_workflow_installs_postgresql_only_for_a_postgresql_bake(bake: Bake, database: str) -> None:
    project = bake(database=database)
    steps = yaml.safe_load((project / WORKFLOW).read_text())["jobs"]["test"]["steps"]
    (install,) = [step["run"] for step in steps if "apt-get" in step.get("run", "")]
    (test,) = [step for step in steps if step.get("name") == "Test"]
    assert ("postgresql" in install) == (database == "postgresql")
    assert ("REQUIRE_POSTGRES" in test["env"]) == (database == "postgresql")
    check = python("-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows")
    run_in(project, *check, WORKFLOW)


def test_workflow_matches_the_github_workflow_schema(default_bake: Path) -> None:
    check = python("-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows")
    run_in(default_bake, *check, WORKFLOW)


def test_workflow_schema_check_refuses_an_unknown_permission(default_bake: Path, tmp_path: Path) -> None:
    broken = broken_copy(default_bake / WORKFLOW, tmp_path / "ci.yml", "contents: read", "contents: reed")
    check = python("-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows")
    status, output = attempt(tmp_path, *check, str(broken))
    assert status != 0, output


def test_workflow_grants_read_only_tokens_and_pins_actions_with_their_version(default_bake: Path) -> None:
    text = (default_bake / WORKFLOW).read_text()
    assert re.search(r"^permissions: \{\}$", text, flags=re.MULTILINE)
    assert set(re.findall(r"^\s+(\w[\w-]*): write$", text, flags=re.MULTILINE)) == set()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), f"{action} lacks its version comment"


# The container --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(default_bake: Path) -> None:
    run_in(default_bake, tool("hadolint"), "Dockerfile")


def test_hadolint_flags_an_untagged_base_image(default_bake: Path, tmp_path: Path) -> None:
    dockerfile = default_bake / "Dockerfile"
    base = re.search(r"^FROM (\S+) AS build$", dockerfile.read_text(), flags=re.MULTILINE).group(1)  # type: ignore[union-attr]
    broken = broken_copy(dockerfile, tmp_path / "Dockerfile", base, "python")
    status, output = attempt(tmp_path, tool("hadolint"), str(broken))
    assert status != 0 and "DL3006" in output, output


def test_image_is_multi_stage_non_root_with_health_check_and_gunicorn(default_bake: Path) -> None:
    lines = (default_bake / "Dockerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    assert all("-slim" in line for line in lines if line.startswith("FROM "))
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), users
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert "/healthz" in "\n".join(lines)
    # The same command the generated tests start: gunicorn, reading ./gunicorn.conf.py.
    assert lines[-1] == 'ENTRYPOINT ["gunicorn"]'


def test_image_copies_only_what_it_needs(default_bake: Path) -> None:
    dockerfile = (default_bake / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from=)(.+)$", dockerfile, flags=re.MULTILINE):
        sources = line.split()[:-1]
        assert set(sources) <= IMAGE_INPUTS, f"COPY {line}: only {sorted(IMAGE_INPUTS)} may enter"
    ignore = [line for line in (default_bake / ".dockerignore").read_text().splitlines() if line[:1] != "#"]
    assert ignore[0] == "*", "the build context must be an allowlist"
    assert {"**/.env", "**/*.pem", "**/*.key"} <= set(ignore)


# The OpenAPI document -------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_document(default_bake: Path) -> Path:
    """What `make openapi` writes for review: the document built from the routes."""
    run_in(default_bake, "make", "openapi", f"PYTHON={sys.executable}", env={"PYTHONPATH": "src"})
    return default_bake / DOCUMENT


def test_make_openapi_writes_a_document_that_passes_the_validator(written_document: Path) -> None:
    output = run_in(written_document.parents[1], *python("-m", "openapi_spec_validator", DOCUMENT))
    assert "OK" in output, output
    assert json.loads(written_document.read_text())["openapi"] == "3.1.0"


def test_openapi_validator_refuses_a_response_without_description(
    written_document: Path, tmp_path: Path
) -> None:
    document = json.loads(written_document.read_text())
    del document["paths"]["/v1/whoami"]["get"]["responses"]["200"]["description"]
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    status, output = attempt(tmp_path, *python("-m", "openapi_spec_validator", "openapi.json"))
    assert status != 0, output


def test_package_data_lists_every_file_that_is_not_python(default_bake: Path) -> None:
    """Without this, a wheel or `pip install .` of the service would leave the document and
    the migrations (which live outside any Python package) out."""
    package = default_bake / "src" / "acme_widgets_api"
    declared = tomllib.loads((default_bake / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = declared["package-data"]["acme_widgets_api"]
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    data = {p for p in package.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
    migrations = {p for p in (package / "migrations").rglob("*") if p.is_file() and p.suffix != ".pyc"}
    assert {p.name for p in data} == {"py.typed"}
    assert migrations, "the migrations directory is empty"
    assert data | migrations <= shipped


# Static security lint, make, audit ------------------------------------------------------


def test_bandit_finds_nothing_at_medium_severity_or_above(default_bake: Path) -> None:
    run_in(default_bake, *python("-m", "bandit", "-q", "-r", "src", "-ll"))


def test_bandit_flags_a_shell_command(default_bake: Path, tmp_path: Path) -> None:
    shutil.copytree(default_bake / "src", tmp_path / "src")
    (tmp_path / "src" / "shell.py").write_text("import subprocess\n\nsubprocess.call(input(), shell=True)\n")
    status, output = attempt(tmp_path, *python("-m", "bandit", "-q", "-r", "src", "-ll"))
    assert status != 0 and "B602" in output, output


def test_make_help_lists_the_everyday_verbs(default_bake: Path) -> None:
    output = run_in(default_bake, "make", "help")
    listed = {line.split()[0] for line in output.splitlines() if line.strip()}
    assert set(MAKE_VERBS) <= listed, output


def test_generated_make_lint_passes(default_bake: Path) -> None:
    output = run_in(default_bake, "make", "lint", f"PYTHON={sys.executable}")
    assert "Success: no issues found" in output, output


def test_make_audit_runs_bandit_and_pip_audit(default_bake: Path) -> None:
    status, output = attempt(default_bake, "make", "audit", f"PYTHON={sys.executable}")
    assert "bandit -q -r src -ll" in output, output
    assert "pip_audit --strict --disable-pip --require-hashes -r requirements-dev.txt" in output, output
    # Every locked package was resolved from the package index, so "not found ... could not be
    # audited" for one of them, like a connection error, means the advisory service did not
    # answer: nothing was audited. Anything else (an advisory found) fails.
    if status != 0 and re.search(r"could not be audited|ConnectionError|Max retries", output):
        pytest.skip(
            "pip-audit needs the package index's vulnerability service, which this machine cannot "
            "reach; bandit passed, and the generated CI runs the audit"
        )
    assert status == 0, output[-4000:]


@pytest.fixture
def redis_uri(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free port (the template's `make test` installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: make system-deps")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_make_smoke_shows_two_workers_sharing_one_limit_in_redis(default_bake: Path, redis_uri: str) -> None:
    output = run_in(default_bake, "make", "smoke", f"PYTHON={sys.executable}", f"REDIS_URL={redis_uri}")
    assert "smoke: ok" in output, output


def test_make_smoke_fails_without_redis(default_bake: Path) -> None:
    nothing_listens = "redis://127.0.0.1:1/0"
    command = ("make", "smoke", f"PYTHON={sys.executable}", f"REDIS_URL={nothing_listens}")
    status, output = attempt(default_bake, *command)
    assert status != 0 and "cannot reach Redis" in output, output


# The secret-scanning pre-commit hook ----------------------------------------------------


def git_env(tmp_path: Path) -> dict[str, str]:
    """Hooks call `python` from PATH, as in an activated virtualenv; no user git config."""
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.com",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.com",
    }


@pytest.fixture
def repository(bake: Bake, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh bake under git with the hooks installed and everything committed once."""
    project = bake()
    env = git_env(tmp_path)
    run_in(project, "git", "init", "-q", "-b", "main", env=env)
    run_in(project, *python("-m", "pre_commit", "install"), env=env)
    run_in(project, "git", "add", "-A", env=env)
    run_in(project, "git", "commit", "-q", "-m", "Generated from the template", env=env)
    return project, env


def fresh_key(project: Path) -> str:
    result = subprocess.run(
        python("-m", "acme_widgets_api.keys", "new", "--id", "leak", "--scope", "items:read", "--json"),
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    key: str = json.loads(result.stdout)["key"]
    return key


def commits(project: Path, env: dict[str, str]) -> int:
    return int(run_in(project, "git", "rev-list", "--count", "HEAD", env=env).strip())


def test_fresh_bake_commits_through_every_hook_env_example_included(
    repository: tuple[Path, dict[str, str]],
) -> None:
    project, env = repository
    tracked = run_in(project, "git", "ls-files", env=env).splitlines()
    assert ".env.example" in tracked and ".pre-commit-config.yaml" in tracked
    assert ".env" not in tracked
    assert commits(project, env) == 1


def test_secret_hook_stops_a_commit_holding_a_fresh_key(repository: tuple[Path, dict[str, str]]) -> None:
    project, env = repository
    key = fresh_key(project)
    (project / "deploy.md").write_text(f"Call it with\n\n    curl -H 'X-API-Key: {key}' ...\n")
    run_in(project, "git", "add", "deploy.md", env=env)
    status, output = attempt(project, "git", "commit", "-m", "Add deploy notes", env=env)
    assert status != 0, output
    assert "deploy.md:3: acme_ API key" in output, output
    assert key not in output
    assert commits(project, env) == 1


def test_secret_hook_lets_a_key_with_a_wrong_checksum_through(
    repository: tuple[Path, dict[str, str]],
) -> None:
    project, env = repository
    key = fresh_key(project)
    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")
    (project / "notes.md").write_text(f"Not a key: {mistyped}\n")
    run_in(project, "git", "add", "notes.md", env=env)
    run_in(project, "git", "commit", "-q", "-m", "Add notes", env=env)
    assert commits(project, env) == 2


def test_dot_env_cannot_be_committed_even_when_forced(repository: tuple[Path, dict[str, str]]) -> None:
    project, env = repository
    run_in(project, "git", "add", "-f", ".env", env=env)
    status, output = attempt(project, "git", "commit", "-m", "Add .env", env=env)
    assert status != 0 and "no-local-secrets" in output, output
    assert commits(project, env) == 1


def test_secret_scanner_names_the_line_and_never_prints_the_key(default_bake: Path, tmp_path: Path) -> None:
    key = fresh_key(default_bake)
    leak = tmp_path / "settings.yaml"
    leak.write_text(f"service:\n  api_key: {key}\n")
    status, output = attempt(default_bake, *python("scripts/check_secrets.py", str(leak), ".env.example"))
    assert status == 1
    assert output.splitlines()[0] == f"{leak}:2: acme_ API key"
    assert key not in output


# cruft ----------------------------------------------------------------------------------


def template_repository(destination: Path, env: dict[str, str]) -> Path:
    """This template's working tree as a git repository, as cruft reads a template."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "reports", "__pycache__", ".*_cache")
    shutil.copytree(TEMPLATE, destination, ignore=ignore)
    run_in(destination, "git", "init", "-q", "-b", "main", env=env)
    run_in(destination, "git", "add", "-A", env=env)
    run_in(destination, "git", "commit", "-q", "-m", "Template", env=env)
    return destination


def test_cruft_create_check_and_update_follow_the_template(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    template = template_repository(tmp_path / "template", env)
    cruft = python("-m", "cruft")
    run_in(tmp_path, *cruft, "create", str(template), "--no-input", "--output-dir", "out", env=env)
    project = tmp_path / "out" / "acme-widgets-api"
    assert "up to date" in run_in(project, *cruft, "check", env=env)
    dev_env = (project / ".env").read_text()

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line the template added later.\n")
    run_in(template, "git", "commit", "-q", "-am", "Template moves on", env=env)
    status, output = attempt(project, *cruft, "check", env=env)
    assert status != 0 and "out of date" in output, output

    run_in(project, "git", "init", "-q", "-b", "main", env=env)
    run_in(project, "git", "add", "-A", env=env)
    run_in(project, "git", "commit", "-q", "-m", "Generated", env=env)
    run_in(project, *cruft, "update", "--skip-apply-ask", env=env)
    assert (project / "README.md").read_text().endswith("A line the template added later.\n")
    assert (project / ".env").read_text() == dev_env, "cruft update must leave .env alone"
    assert list(project.rglob("*.rej")) == [], "cruft update left rejected hunks"
    assert "up to date" in run_in(project, *cruft, "check", env=env)
