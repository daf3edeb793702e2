"""Re-lock every lock set the template ships (uses the package index; bakes never do).

A bake cannot resolve dependencies, since hooks never use the network, so the template ships
its locks: templates/locks/<set>/requirements*.txt, and each bake includes the set that
cookiecutter.json's `__lock_set` names for its choices. For each set in
templates/locks/sets.json (set name -> the choices that bake it), this bakes the template,
runs the bake's own `make lock` there, and copies the result back with the project's name
turned into the template variable again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
LOCK_FILES = ("requirements.txt", "requirements-dev.txt")
# uv marks what pyproject.toml asks for with the project's name; a bake puts its own there.
DIRECT = "{slug} (pyproject.toml)"
SLUG = "{{ cookiecutter.project_slug }}"


def lock_sets(template: Path) -> dict[str, dict[str, str]]:
    sets: dict[str, dict[str, str]] = json.loads((template / "templates/locks/sets.json").read_text())
    return sets


def relock(template: Path, name: str, choices: dict[str, str], *, upgrade: bool) -> None:
    stored = template / "templates/locks" / name
    stored.mkdir(parents=True, exist_ok=True)
    for lock in LOCK_FILES:
        # A new set starts empty: the bake must render before it can be locked.
        (stored / lock).touch()
    with tempfile.TemporaryDirectory(prefix="lock-") as scratch:
        project = Path(cookiecutter(str(template), no_input=True, output_dir=scratch, extra_context=choices))
        target = "lock-upgrade" if upgrade else "lock"
        subprocess.run(["make", "-s", target, f"PYTHON={sys.executable}"], cwd=project, check=True)
        baked, variable = DIRECT.format(slug=project.name), DIRECT.format(slug=SLUG)
        for lock in LOCK_FILES:
            text = (project / lock).read_text(encoding="utf-8")
            (stored / lock).write_text(text.replace(baked, variable), encoding="utf-8")
    print(f"locked {name}: {', '.join(str(stored / lock) for lock in LOCK_FILES)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to its newest release")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="template root (default: this one)")
    args = parser.parse_args()
    for name, choices in lock_sets(args.template).items():
        relock(args.template, name, choices, upgrade=args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
