"""A baked project for the benchmarks: a fresh bake of this template with its defaults, or one
given with ``--project``. The scripts here import its package from its ``src/``, so they measure
the code a bake really holds and carry no template syntax themselves."""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[1]


class BakeError(RuntimeError):
    """The template did not bake."""


def bake(directory: Path, **context: str) -> Path:
    """Bake the template into ``directory``, with its defaults but for ``context``; return the
    project."""
    choices = [f"{name}={value}" for name, value in context.items()]
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(TEMPLATE), "--no-input", "-o", str(directory), *choices],
        capture_output=True,  # the post-gen hook prints a development key: keep it off the screen.
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise BakeError(f"bake failed:\n{result.stderr}")
    (project,) = (p for p in directory.iterdir() if p.is_dir())
    return project


def add_project_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", type=Path, help="measure this baked project instead of a fresh bake of the template"
    )


def project_or_bake(project: Path | None, work: Path) -> Path:
    """The project given, or a fresh bake in ``work``."""
    return project.resolve() if project is not None else bake(work / "bake")


def package_of(project: Path) -> str:
    """The bake's package name (it depends on the project name it was baked with)."""
    return next(p.parent.parent.name for p in (project / "src").glob("*/keys/__init__.py"))


def module(project: Path, name: str) -> ModuleType:
    """``<package>.<name>`` of the bake, imported from its src/ (``name=""``: the package)."""
    source = str(project / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    package = package_of(project)
    return importlib.import_module(f"{package}.{name}" if name else package)


def items_store(project: Path, path: str) -> Any:
    """The bake's items store on the SQLite file ``path``, migrated first, as the service opens
    it (without gevent: its calls run in the caller's thread)."""
    connections = module(project, "stores.connections")
    connections.apply_migrations(path)
    return module(project, "stores.items").ItemStore(connections.Database(path))


def environ(path: str, headers: Mapping[str, str], *, multiprocess: bool = False) -> dict[str, Any]:
    """A WSGI environ for ``GET path`` from 127.0.0.1 with ``headers``, for calling the app
    in a loop without a server."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }
