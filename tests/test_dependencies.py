"""Every bake is locked, current and audited: floors above known advisories, a hashed lock that
matches pyproject.toml (and a test in the bake that says so), Dockerfile and CI installing from
it, Dependabot, an SBOM, and one list of Python versions. Tests marked ``index`` use the
package index (`make lock`, a fresh install); the rest run offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cookiecutter.main import cookiecutter
from packaging.requirements import Requirement
from packaging.version import Version

from .conftest import TEMPLATE, Bake, python, run_in

LOCKS = TEMPLATE / "templates" / "locks"
LOCK_SETS: dict[str, dict[str, str]] = json.loads((LOCKS / "sets.json").read_text())
# package: (a release with a known advisory that the floor must refuse, the floor it must allow)
ADVISORY_FLOORS = {
    "flask": ("3.1.2", "3.1.3"),  # GHSA-68rp-wp8r-4726
    "werkzeug": ("3.1.5", "3.1.6"),  # GHSA-29vq-49wr-vm6x, the last of three safe_join fixes
    "gunicorn": ("22.0.0", "23.0.0"),  # CVE-2024-1135, CVE-2024-6827
    "gevent": ("23.7.0", "24.10.1"),  # CVE-2023-41419; 24.10.1 is what gunicorn's gevent worker needs
    "python-dotenv": ("1.2.1", "1.2.2"),  # CVE-2026-28684
    "pytest": ("9.0.2", "9.0.3"),  # GHSA-6w46-j5rx-g56g
    "cryptography": ("48.0.0", "48.0.1"),  # GHSA-537c-gmf6-5ccf
    "setuptools": ("78.1.0", "78.1.1"),  # CVE-2025-47273
}
# Host names of the package index and its file store, as a pattern (so this file names neither).
REGISTRY_HOST = re.compile(r"pypi\.org|pythonhosted\.org|pypi\.python\.org")


def pyproject(project: Path) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads((project / "pyproject.toml").read_text())
    return table


def requirements_of(project: Path) -> list[Requirement]:
    table = pyproject(project)["project"]
    assert isinstance(table, dict)
    return [Requirement(text) for text in table["dependencies"] + table["optional-dependencies"]["dev"]]


def locked_names(lock: Path) -> dict[str, set[str]]:
    """Package name -> the versions a lock pins for it (some differ by Python version)."""
    pins: dict[str, set[str]] = {}
    for name, version in re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s;]+)", lock.read_text(), flags=re.M):
        pins.setdefault(name, set()).add(version)
    return pins


# Floors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["generated pyproject.toml", "tests/requirements.txt"])
def test_floors_refuse_every_release_with_a_known_advisory(default_bake: Path, source: str) -> None:
    if source == "tests/requirements.txt":
        lines = (TEMPLATE / "tests" / "requirements.txt").read_text().splitlines()
        requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    else:
        requirements = requirements_of(default_bake)
    by_name = {requirement.name: requirement for requirement in requirements}
    for name, (vulnerable, fixed) in ADVISORY_FLOORS.items():
        specifier = by_name[name].specifier
        assert Version(vulnerable) not in specifier, f"{source}: {name} {specifier} admits {vulnerable}"
        assert Version(fixed) in specifier, f"{source}: {name} {specifier} refuses {fixed}"


def test_locked_versions_are_at_or_above_every_floor(default_bake: Path) -> None:
    pins = locked_names(default_bake / "requirements-dev.txt")
    for name, (_, fixed) in ADVISORY_FLOORS.items():
        assert pins[name] and all(Version(v) >= Version(fixed) for v in pins[name]), (name, pins[name])


# The lock -------------------------------------------------------------------------------


def test_lock_sets_on_disk_are_the_ones_listed() -> None:
    on_disk = {path.name for path in LOCKS.iterdir() if path.is_dir()}
    assert on_disk == set(LOCK_SETS)
    for name in LOCK_SETS:
        assert {p.name for p in (LOCKS / name).iterdir()} == {"requirements.txt", "requirements-dev.txt"}


@pytest.mark.parametrize("lock_set", sorted(LOCK_SETS))
def test_each_lock_set_bakes_a_lock_that_matches_its_pyproject(bake: Bake, lock_set: str) -> None:
    project = bake(project_name="Globex Billing Service", **LOCK_SETS[lock_set])
    for name in ("requirements.txt", "requirements-dev.txt"):
        shipped = (LOCKS / lock_set / name).read_text()
        baked = shipped.replace("{{ cookiecutter.project_slug }}", "globex-billing-service")
        assert (project / name).read_text() == baked, f"{name} is not lock set {lock_set}'s"
    output = run_in(project, *python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_lock.py"))
    assert "6 passed" in output, output


def edit_dependencies(project: Path, old: str, new: str) -> None:
    path = project / "pyproject.toml"
    text = path.read_text()
    assert old in text, f"{old!r} not in pyproject.toml: update this test"
    path.write_text(text.replace(old, new, 1))


def lock_test(project: Path) -> tuple[int, str]:
    result = subprocess.run(
        python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_lock.py"),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (
            '"gevent>=24.10.1",',
            '"gevent>=24.10.1",\n    "a-new-dependency>=1.0",',
            "a-new-dependency: in pyproject.toml, not in requirements.txt",
        ),
        ('"werkzeug>=3.1.6",', '"werkzeug>=99.0",', "werkzeug: requirements.txt pins"),
        (
            '    "python-dotenv>=1.2.2",  # CVE-2026-28684\n',
            "",
            "python-dotenv: in requirements.txt for pyproject.toml, which no longer asks for it",
        ),
    ],
    ids=["dependency-added", "floor-raised", "dependency-dropped"],
)
def test_bake_lock_test_fails_when_pyproject_changes_without_make_lock(
    bake: Bake, old: str, new: str, named: str
) -> None:
    project = bake()
    assert lock_test(project)[0] == 0
    edit_dependencies(project, old, new)
    status, output = lock_test(project)
    assert status != 0 and named in output and "run `make lock`" in output, output


@pytest.mark.index
def test_make_lock_takes_in_a_new_dependency_and_the_lock_test_passes_again(bake: Bake) -> None:
    """Adding a dependency is: edit pyproject.toml, `make lock`. Uses the package index."""
    project = bake()
    edit_dependencies(project, '"gevent>=24.10.1",', '"gevent>=24.10.1",\n    "six>=1.16",')
    assert lock_test(project)[0] != 0
    run_in(project, "make", "-s", "lock", f"PYTHON={sys.executable}")
    status, output = lock_test(project)
    assert status == 0, output
    for lock in ("requirements.txt", "requirements-dev.txt"):
        assert "six" in locked_names(project / lock), lock


@pytest.mark.index
def test_shipped_lock_is_what_make_lock_writes_today(default_bake: Path) -> None:
    output = run_in(default_bake, "make", "-s", "lock-check", f"PYTHON={sys.executable}")
    assert "lock-check: requirements*.txt match pyproject.toml" in output, output


@pytest.mark.index
def test_fresh_virtualenv_installs_the_image_lock_with_hashes_and_runs_the_service(
    default_bake: Path, tmp_path: Path
) -> None:
    """The Dockerfile's install, on this machine: only locked wheels, every hash checked."""
    venv = tmp_path / "venv"
    run_in(tmp_path, sys.executable, "-m", "venv", str(venv))
    pip = (str(venv / "bin" / "python"), "-m", "pip")
    command = (*pip, "install", "--no-cache-dir", "--require-hashes", "--only-binary", ":all:")
    run_in(default_bake, *command, "-r", "requirements.txt")
    run_in(default_bake, *pip, "check")
    probe = "import acme_widgets_api, gevent, gunicorn; print(acme_widgets_api.create_app.__name__)"
    output = run_in(default_bake, str(venv / "bin" / "python"), "-c", probe, env={"PYTHONPATH": "src"})
    assert output.strip() == "create_app", output


@pytest.mark.index
def test_template_relock_keeps_one_lock_set_per_dependency_choice(tmp_path: Path) -> None:
    """The documented way to give a choice its own dependencies, on a copy of the template:
    a throwaway choice adds a package, names the lock set, and `scripts/lock.py` locks both
    sets. Only the "yes" bake has the package; both bakes pass their lock test. Uses the index."""
    template = shutil.copytree(
        TEMPLATE,
        tmp_path / "template",
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "reports", "__pycache__"),
    )
    context = json.loads((template / "cookiecutter.json").read_text())
    context = {"throwaway": ["no", "yes"], **context, "__lock_set": "{{ cookiecutter.throwaway }}"}
    (template / "cookiecutter.json").write_text(json.dumps(context, indent=2))
    edit_dependencies(
        template / "{{cookiecutter.project_slug}}",
        '"gevent>=24.10.1",',
        '"gevent>=24.10.1",{% if cookiecutter.throwaway == "yes" %}\n    "six>=1.16",{% endif %}',
    )
    locks = template / "templates" / "locks"
    (locks / "sqlite").rename(locks / "no")
    shutil.rmtree(locks / "postgresql")
    (locks / "sets.json").write_text(json.dumps({"no": {"throwaway": "no"}, "yes": {"throwaway": "yes"}}))
    run_in(tmp_path, sys.executable, str(TEMPLATE / "scripts" / "lock.py"), "--template", str(template))
    for choice in ("no", "yes"):
        output = str(tmp_path / choice)
        project = Path(
            cookiecutter(str(template), no_input=True, output_dir=output, extra_context={"throwaway": choice})
        )
        assert lock_test(project)[0] == 0, choice
        assert ("six" in locked_names(project / "requirements.txt")) == (choice == "yes")


# Dependabot -----------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["yes", "no"])
def test_dependabot_watches_the_lock_the_actions_and_the_image_with_a_cooldown(
    bake: Bake, container: str
) -> None:
    project = bake(container=container)
    config = project / ".github" / "dependabot.yml"
    run_in(project, *python("-m", "check_jsonschema", "--builtin-schema", "vendor.dependabot", str(config)))
    updates = yaml.safe_load(config.read_text())["updates"]
    ecosystems = {update["package-ecosystem"] for update in updates}
    assert ecosystems == {"pip", "github-actions"} | ({"docker"} if container == "yes" else set())
    assert all(update["cooldown"]["default-days"] >= 3 for update in updates)


def test_dependabot_schema_check_refuses_an_unknown_ecosystem(default_bake: Path, tmp_path: Path) -> None:
    text = (default_bake / ".github" / "dependabot.yml").read_text()
    assert "package-ecosystem: pip\n" in text
    broken = tmp_path / "dependabot.yml"
    broken.write_text(text.replace("package-ecosystem: pip\n", "package-ecosystem: pipx\n", 1))
    check = python("-m", "check_jsonschema", "--builtin-schema", "vendor.dependabot", str(broken))
    assert subprocess.run(check, capture_output=True, check=False).returncode != 0


def test_without_github_actions_there_is_no_dependabot_config(bake: Bake) -> None:
    assert not (bake(github_actions="no") / ".github").exists()


# SBOM -----------------------------------------------------------------------------------


def test_sbom_made_offline_from_the_lock_lists_every_runtime_package(
    default_bake: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(default_bake, tmp_path / "project")
    run_in(project, "make", "-s", "sbom", f"PYTHON={sys.executable}")
    bom = json.loads((project / "sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["name"] == "acme-widgets-api"
    listed: dict[str, set[str]] = {}
    for component in bom["components"]:
        listed.setdefault(component["name"], set()).add(component["version"])
        assert component["purl"] == f"pkg:pypi/{component['name']}@{component['version']}"
    assert listed == locked_names(project / "requirements.txt")
    table = pyproject(project)["project"]
    assert isinstance(table, dict)
    assert {Requirement(text).name for text in table["dependencies"]} <= set(listed)


# Python versions --------------------------------------------------------------------------


def test_ci_matrix_classifiers_requires_python_lock_and_image_name_the_same_pythons(
    default_bake: Path,
) -> None:
    workflow = yaml.safe_load((default_bake / ".github/workflows/ci.yml").read_text())
    matrices = [
        job["strategy"]["matrix"]["python-version"] for job in workflow["jobs"].values() if "strategy" in job
    ]
    assert matrices and all(matrix == matrices[0] for matrix in matrices)
    tested = matrices[0]
    assert tested == ["3.11", "3.12", "3.13", "3.14"]
    table = pyproject(default_bake)["project"]
    assert isinstance(table, dict)
    declared = [c.rsplit(" :: ", 1)[1] for c in table["classifiers"] if re.fullmatch(r".* :: 3\.\d+", c)]
    assert declared == tested
    assert table["requires-python"] == f">={tested[0]}"
    assert f"--python-version {tested[0]} " in (default_bake / "Makefile").read_text()
    bases = re.findall(
        r"^FROM python:(\d+\.\d+)-slim@sha256:[0-9a-f]{64}",
        (default_bake / "Dockerfile").read_text(),
        flags=re.M,
    )
    assert len(bases) == 2 and set(bases) == {tested[-1]}


# Installs from the lock -----------------------------------------------------------------


def test_image_ci_and_make_install_use_the_locks_with_hashes(default_bake: Path) -> None:
    dockerfile = (default_bake / "Dockerfile").read_text()
    assert (
        "pip install --no-cache-dir --require-hashes --only-binary :all: -r /tmp/requirements.txt"
        in dockerfile
    )
    assert "COPY requirements.txt /tmp/requirements.txt" in dockerfile
    assert not re.search(r"pip install[^\n]* \.(\s|$)", dockerfile), "the image must not resolve the project"
    makefile = (default_bake / "Makefile").read_text()
    install = makefile.split("\ninstall:", 1)[1].split("\n\n", 1)[0]
    assert "pip install --require-hashes -r requirements-dev.txt" in install
    assert "pip install --no-deps --no-build-isolation -e ." in install
    workflow = yaml.safe_load((default_bake / ".github/workflows/ci.yml").read_text())
    for name, job in workflow["jobs"].items():
        runs = [step["run"] for step in job["steps"] if "run" in step]
        assert any(run.strip().endswith("make install") for run in runs), name
        assert not any("pip install" in run for run in runs), name
    assert "make audit" in json.dumps(workflow) and "make sbom" in json.dumps(workflow)


# No registry host -------------------------------------------------------------------------


def test_no_project_file_names_a_package_registry_host() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=TEMPLATE, capture_output=True, text=True, check=False)
    files = tracked.stdout.split() if tracked.returncode == 0 else []
    if not files:
        files = [
            str(p.relative_to(TEMPLATE)) for p in TEMPLATE.rglob("*") if p.is_file() and ".git" not in p.parts
        ]
    named = [name for name in files if REGISTRY_HOST.search((TEMPLATE / name).read_text(errors="replace"))]
    assert named == []
