"""The routes of the service: one blueprint per resource, each declaring who may call it."""

from flask import Blueprint, Flask

from .. import metrics
from . import health, items, openapi, whoami

# Every blueprint the service serves; `make resource` adds its module here.
BLUEPRINTS: tuple[Blueprint, ...] = (
    health.blueprint,
    whoami.blueprint,
    items.blueprint,
    metrics.blueprint,
)


def register_blueprints(app: Flask, *, openapi_enabled: bool = False) -> None:
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    if openapi_enabled:
        # Not registered at all when off: /openapi.json is then a plain 404 like any unknown path.
        app.register_blueprint(openapi.blueprint)


def routes_only() -> Flask:
    """An app with the service's routes and nothing else: what the OpenAPI document describes."""
    app = Flask(__name__.rpartition(".")[0], static_folder=None)
    register_blueprints(app)
    return app
