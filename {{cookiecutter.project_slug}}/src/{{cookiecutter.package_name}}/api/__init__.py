"""The reference API: one blueprint per resource, each declaring the scope it needs."""

from flask import Flask

from . import health, items, whoami


def register_blueprints(app: Flask) -> None:
    for module in (health, whoami, items):
        app.register_blueprint(module.blueprint)
