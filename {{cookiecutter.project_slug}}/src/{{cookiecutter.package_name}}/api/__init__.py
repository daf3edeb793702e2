"""The reference API: one blueprint per resource, each declaring the scope it needs."""

from flask import Flask

from . import health, items, openapi, whoami


def register_blueprints(app: Flask, *, openapi_enabled: bool = False) -> None:
    for module in (health, whoami, items):
        app.register_blueprint(module.blueprint)
    if openapi_enabled:
        # Not registered at all when off: /openapi.json is then a plain 404 like any unknown path.
        app.register_blueprint(openapi.blueprint)
