"""Bake the template for real (cookiecutter's API) into temporary directories."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]

Bake = Callable[..., Path]


@pytest.fixture(autouse=True)
def one_heavy_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests marked ``xdist_group("heavy")`` (whole suites, load and attacks, each bounding a latency
    under attacks of its own) run one at a time across xdist's workers: two at once on two cores
    measure each other, not the service. xdist's loadgroup alone does not keep them apart: it sends
    the cases of a parametrized test to different workers. An exclusive lock on a file in the run's
    shared temporary directory does, whatever the scheduling."""
    marker = request.node.get_closest_marker("xdist_group")
    if marker is None or "heavy" not in (*marker.args, marker.kwargs.get("name")):
        yield
        return
    # Every worker's base directory sits in the same directory of the run (pytest-of-<user>/pytest-N).
    lock = tmp_path_factory.getbasetemp().parent / "heavy.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


@pytest.fixture
def bake(tmp_path: Path) -> Bake:
    """Bake with ``extra_context`` and return the project directory."""

    def run(**context: str) -> Path:
        output = tmp_path / "out"
        return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=context))

    return run


@pytest.fixture(scope="session")
def default_bake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("default")
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output)))


def run_in(project: Path, *command: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run a command inside a bake with this interpreter's tools; fail with its output."""
    result = subprocess.run(
        command,
        cwd=project,
        env={**os.environ, "REQUIRE_REDIS": "1", "REQUIRE_POSTGRES": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed in {project.name}:\n{output[-6000:]}"
    return output


def python(*args: str) -> tuple[str, ...]:
    return (sys.executable, *args)


_SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The mutation score of make mutate's scope and its survivors, when this run measured them."""
    report = TEMPLATE / "reports" / "mutation.txt"
    if not report.is_file() or report.stat().st_mtime < _SESSION_STARTED:
        return
    terminalreporter.section("mutation testing (reports/mutation.txt)")
    shown = ("SURVIVED", "accepted", "BROKEN", "    why:", "no longer needed")
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith(shown) or " killed (" in line or " unexplained, in " in line:
            terminalreporter.write_line(line)
