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
import yaml

from .conftest import TEMPLATE, Bake, python, run_in

# `${{ ... }}` is GitHub Actions' own expression syntax (the workflow is copied unrendered).
LEFTOVER_SYNTAX = re.compile(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.")
CHOICES = {"container": ("yes", "no"), "github_actions": ("yes", "no"), "database": ("sqlite", "postgresql")}
# The files each choice brings, present exactly when it is made.
OPTIONAL_FILES = {
    ("container", "yes"): ("Dockerfile", ".dockerignore", "tests/test_container.py"),
    ("github_actions", "yes"): (".github",),
    ("database", "sqlite"): (
        "src/acme_widgets_api/migrations/versions/sqlite_0001_items.py",
        "src/acme_widgets_api/migrations/versions/sqlite_0002_key_records.py",
        "tests/test_sqlite.py",
    ),
    ("database", "postgresql"): (
        "compose.yaml",
        "compose/initdb.sh",
        "src/acme_widgets_api/migrations/versions/postgresql_0001_items.py",
        "src/acme_widgets_api/migrations/versions/postgresql_0002_key_records.py",
        "scripts/local_postgres.py",
        "tests/test_postgres.py",
        "tests/test_postgres_servers.py",
        "tests/test_row_level_security.py",
    ),
}
# Modules with one version per database: the chosen one under the plain name, no other left.
VARIANTS = (
    "src/acme_widgets_api/database.py",
    "src/acme_widgets_api/database_settings.py",
    "src/acme_widgets_api/stores/connections.py",
    "src/acme_widgets_api/stores/items.py",
    "src/acme_widgets_api/stores/key_records.py",
    "tests/database.py",
    "scripts/local_database.py",
)
VARIANT_MARK = {"sqlite": "sqlite3.Connection", "postgresql": "psycopg.Cursor"}
COMBINATIONS = [dict(zip(CHOICES, values, strict=True)) for values in itertools.product(*CHOICES.values())]
COMPOSE_SCHEMA = TEMPLATE / "tests" / "compose-spec.json"


def combination_id(context: dict[str, str]) -> str:
    return "-".join(f"{name}={value}" for name, value in context.items())


def text_files(project: Path) -> list[Path]:
    return [p for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_default_bake_derives_every_name(default_bake: Path) -> None:
    assert default_bake.name == "acme-widgets-api"
    assert (default_bake / "src" / "acme_widgets_api" / "keys" / "__init__.py").is_file()
    assert 'KEY_PREFIX = "acme"' in (default_bake / "src/acme_widgets_api/keys/format.py").read_text()
    assert (
        tomllib.loads((default_bake / "pyproject.toml").read_text())["project"]["name"] == "acme-widgets-api"
    )


def test_custom_project_name_derives_slug_package_and_prefix(bake: Bake) -> None:
    project = bake(project_name="Globex Billing Service")
    assert project.name == "globex-billing-service"
    assert (project / "src" / "globex_billing_service" / "app.py").is_file()
    assert 'KEY_PREFIX = "globex"' in (project / "src/globex_billing_service/keys/format.py").read_text()
    assert (project / ".env").read_text().count("sha256=") == 1
    # The name reaches the package, the key prefix and what the tests import: the fast suite
    # covers all three, so the slow one runs on the default and PostgreSQL bakes only.
    run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"))


@pytest.mark.parametrize("context", COMBINATIONS, ids=combination_id)
def test_every_combination_bakes_lints_and_passes_its_fast_suite(bake: Bake, context: dict[str, str]) -> None:
    project = bake(**context)
    for path in text_files(project):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not LEFTOVER_SYNTAX.search(text), f"template syntax left in {path.relative_to(project)}"
    for (option, choice), paths in OPTIONAL_FILES.items():
        for name in paths:
            assert (project / name).exists() == (context[option] == choice), name
    for name in VARIANTS:
        assert not list((project / name).parent.glob(f"{Path(name).stem}.*.py")), name
    store = (project / "src/acme_widgets_api/stores/connections.py").read_text()
    assert VARIANT_MARK[context["database"]] in store
    run_in(project, *python("-m", "ruff", "check", "."))
    run_in(project, *python("-m", "ruff", "format", "--check", "."))
    run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_fast_suite_holds_a_new_resource_to_every_rule_of_the_reference_one(
    bake: Bake, database: str
) -> None:
    """After `make resource NAME=orders`, as a team's first change: every fast test that walks the
    routes (scopes, tenants, shapes, the document, limits) walks the new resource's too."""
    project = bake(database=database)
    run_in(project, "make", "resource", "NAME=orders", f"PYTHON={sys.executable}")
    assert (project / "tests" / "test_orders.py").is_file()
    output = run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"))
    assert " passed" in output and "skipped" not in output, output[-2000:]


# One at a time, and never beside the load tests: each runs attacks with processes of their own
# (thousands of connections from one address) against a server whose latency it bounds, and two
# at once on two cores measure each other, not the service. The fast tier of the same bakes runs
# in the test above and in the combinations', outside this lock.
@pytest.mark.xdist_group("heavy")
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_slow_suite_passes_with_real_processes(bake: Bake, database: str) -> None:
    """With REQUIRE_POSTGRES=1, the PostgreSQL bake starts its own server (as root, through runuser
    as the postgres user) and fails rather than skip where it cannot, as the Redis tests do."""
    project = bake(database=database)
    run_in(project, "make", "resource", "NAME=orders", f"PYTHON={sys.executable}")
    output = run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow"))
    assert " passed" in output and "skipped" not in output, output[-2000:]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_generated_package_type_checks(bake: Bake, database: str) -> None:
    run_in(bake(database=database), *python("-m", "mypy"))


@pytest.mark.parametrize("container", ["yes", "no"])
def test_compose_file_is_valid_against_the_compose_specification(bake: Bake, container: str) -> None:
    """No container engine runs here: the Compose specification's own JSON schema checks the
    file, and the services it must have, with health checks and secrets from files."""
    project = bake(database="postgresql", container=container)
    compose = project / "compose.yaml"
    run_in(project, *python("-m", "check_jsonschema", "--schemafile", str(COMPOSE_SCHEMA), str(compose)))
    services = yaml.safe_load(compose.read_text())["services"]
    expected = {"postgres", "redis"} | ({"migrate", "api"} if container == "yes" else set())
    assert set(services) == expected
    assert all("healthcheck" in services[name] for name in ("postgres", "redis", "api") if name in services)
    # Every secret is a file the post-generation hook wrote; no password is in the file itself.
    secrets = yaml.safe_load(compose.read_text())["secrets"]
    for secret in secrets.values():
        assert set(secret) == {"file"}
        assert (project / secret["file"]).is_file(), secret
    assert "POSTGRES_PASSWORD:" not in compose.read_text()


def test_compose_schema_check_refuses_a_misspelt_key(bake: Bake, tmp_path: Path) -> None:
    text = (bake(database="postgresql") / "compose.yaml").read_text()
    assert "    healthcheck:\n" in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace("    healthcheck:\n", "    healthchecks:\n", 1))
    check = python("-m", "check_jsonschema", "--schemafile", str(COMPOSE_SCHEMA), str(broken))
    assert subprocess.run(check, capture_output=True, check=False).returncode != 0


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


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_template_requirements_cover_every_generated_dependency(bake: Bake, database: str) -> None:
    project = tomllib.loads((bake(database=database) / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    have = (TEMPLATE / "tests" / "requirements.txt").read_text()
    for requirement in wanted:
        assert requirement in have, f"tests/requirements.txt lacks {requirement}"


def test_postgresql_bake_needs_psycopg_and_sqlite_bake_does_not(bake: Bake) -> None:
    for database in ("sqlite", "postgresql"):
        baked = bake(project_name=f"{database} api", database=database)
        project = tomllib.loads((baked / "pyproject.toml").read_text())["project"]
        drivers = [r for r in project["dependencies"] if r.startswith("psycopg")]
        assert bool(drivers) == (database == "postgresql"), drivers


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
    """Runs bench/inprocess.py on a bake (the service, the minimal and seed-style stacks and bare Flask in one
    process): printed figures; fails only if it breaks or the service becomes grossly slower."""
    output = run_in(default_bake, *bench("inprocess.py", default_bake, "--requests", "1000", "--rounds", "2"))
    print(output)
    ratios = re.findall(r"^service .* \(([\d.]+) of bare, [\d.]+ of minimal\)$", output, flags=re.MULTILINE)
    assert len(ratios) == 2
    assert all(float(ratio) > 0.1 for ratio in ratios), output


# A private module of a dependency (`pkg._x`), Flask's deprecated request context, Werkzeug's
# header list: what breaks when a dependency ships its next release.
PRIVATE_API = re.compile(
    r"(?:from|import) (?:flask_limiter|flask_talisman|werkzeug|flask|gunicorn|limits|gevent)(?:\.\w+)*\._"
    r"|request_ctx|\._list\b|\._create_unverified_context"
)


def test_no_bake_reaches_into_a_dependencys_private_parts(default_bake: Path) -> None:
    found = [
        f"{path.relative_to(default_bake)}:{number}: {line.strip()}"
        for path in text_files(default_bake)
        if path.suffix in (".py", "") or path.name in ("Dockerfile", "Makefile")
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if PRIVATE_API.search(line)
    ]
    assert not found, found
    run_in(default_bake, *python("-m", "ruff", "check", "--select", "SLF001", "."))


def test_the_suite_passes_against_the_next_flask_limiter_release(default_bake: Path, tmp_path: Path) -> None:
    """Every process of the run (gunicorn's too) imports a Flask-Limiter that says it is 4.2.0:
    nothing in a bake may depend on the release it was written against."""
    (tmp_path / "sitecustomize.py").write_text('import flask_limiter\nflask_limiter.__version__ = "4.2.0"\n')
    env = {"PYTHONPATH": str(tmp_path)}
    version = "import flask_limiter; print(flask_limiter.__version__)"
    seen = run_in(default_bake, *python("-c", version), env=env)
    assert seen.strip() == "4.2.0"
    pytest = ("-m", "pytest", "-q", "-p", "no:cacheprovider")
    for selection in (("-m", "not slow"), ("tests/test_limits_redis.py",)):
        output = run_in(default_bake, *python(*pytest, *selection), env=env)
        # The summary's count, not the word: a test's name may say "failed" (--durations lists them).
        assert " passed" in output and not re.search(r"\b\d+ failed\b", output), output[-2000:]
