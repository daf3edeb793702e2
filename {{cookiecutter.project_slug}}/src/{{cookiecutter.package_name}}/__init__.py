"""{{ cookiecutter.project_name }}: {{ cookiecutter.description }}"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .settings import Settings

__all__ = ["__version__", "create_app"]

# The one place of the version: pyproject.toml reads it, and so does the OpenAPI document.
__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service; see :func:`.app.create_app`.

    Imported on call, so that ``python -m <package>.keys`` and ``.settings`` run their module
    once, without the package importing it first (and without loading Flask to mint a key).
    """
    from .app import create_app as build

    return build(settings)
