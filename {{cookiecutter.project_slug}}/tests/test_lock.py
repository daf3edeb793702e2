"""The locks stay in step with pyproject.toml, so what is tested is what ships.

`requirements.txt` (what the image installs) and `requirements-dev.txt` (what `make install`
and CI install) pin every package with the hash of every file, for Python 3.11 to 3.14. They
are written by `make lock` from pyproject.toml. A dependency added, dropped or raised in
pyproject.toml without `make lock` would leave the image running something nobody declared,
or without something the code needs: these tests fail first, offline, and name the package.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.txt"
DEV_LOCK = ROOT / "requirements-dev.txt"

PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(?: ; (?P<marker>.+?))? \\$")
HASH = re.compile(r"\s+--hash=(?P<hash>sha256:[0-9a-f]{64})(?: \\)?$")
# "    # via flask" or, one per line under "    # via", "    #   flask".
VIA = re.compile(r"\s+# (?:via |  )(?P<source>\S.*)$")


@dataclass
class Pin:
    name: NormalizedName
    version: Version
    marker: str
    hashes: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)


def read_lock(path: Path) -> list[Pin]:
    """The pins of a lock written by `uv pip compile --generate-hashes` (annotations kept)."""
    pins: list[Pin] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if pin := PIN.fullmatch(line):
            pins.append(Pin(canonicalize_name(pin["name"]), Version(pin["version"]), pin["marker"] or ""))
        elif (digest := HASH.fullmatch(line)) and pins:
            pins[-1].hashes.add(digest["hash"])
        elif (via := VIA.fullmatch(line)) and pins:
            pins[-1].via.add(via["source"])
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: a line that `make lock` does not write: {line!r}")
    return pins


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared(*, dev: bool) -> list[Requirement]:
    table = pyproject()["project"]
    requirements = table["dependencies"] + (table["optional-dependencies"]["dev"] if dev else [])
    return [Requirement(text) for text in requirements]


def disagreements(lock: Path, *, dev: bool) -> list[str]:
    """Every way the lock and pyproject.toml disagree, one line each, naming the package."""
    pins = read_lock(lock)
    wanted = {canonicalize_name(requirement.name): requirement for requirement in declared(dev=dev)}
    problems = []
    for name, requirement in sorted(wanted.items()):
        versions = [pin.version for pin in pins if pin.name == name]
        if not versions:
            problems.append(f"{name}: in pyproject.toml, not in {lock.name}")
        for version in versions:
            if not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{name}: {lock.name} pins {version}, pyproject.toml asks {requirement}")
    # uv marks each package that pyproject.toml asked for by the project's name.
    direct = f"{pyproject()['project']['name']} (pyproject.toml)"
    for pin in pins:
        if direct in pin.via and pin.name not in wanted:
            problems.append(f"{pin.name}: in {lock.name} for pyproject.toml, which no longer asks for it")
    return problems


@pytest.mark.parametrize(("lock", "dev"), [(RUNTIME_LOCK, False), (DEV_LOCK, True)], ids=["runtime", "dev"])
def test_lock_pins_what_pyproject_asks_and_nothing_it_dropped(lock: Path, dev: bool) -> None:
    problems = disagreements(lock, dev=dev)
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_every_pin_is_exact_and_carries_its_hashes(lock: Path) -> None:
    pins = read_lock(lock)
    assert pins
    assert [pin.name for pin in pins if not pin.hashes] == []
    assert lock.read_text(encoding="utf-8").splitlines()[1] == "#    make lock"


def test_development_runs_exactly_what_the_image_installs() -> None:
    """Every runtime pin is in the dev lock at the same version with the same hashes (its
    markers may be wider there: a dev tool can need the same package on more platforms)."""
    dev = {(pin.name, pin.version): pin.hashes for pin in read_lock(DEV_LOCK)}
    for pin in read_lock(RUNTIME_LOCK):
        assert dev.get((pin.name, pin.version)) == pin.hashes, (
            f"{pin.name} {pin.version}: not in the dev lock"
        )


def test_setuptools_for_the_editable_install_is_the_build_backend_pyproject_names() -> None:
    """`make install` builds the editable install with the locked setuptools (no download)."""
    build = pyproject()["build-system"]["requires"]
    dev = [str(requirement) for requirement in declared(dev=True) if requirement.name == "setuptools"]
    assert dev == build
