"""The routes of the service: one blueprint per resource, each declaring who may call it."""

from flask import Blueprint, Flask, Response

from .. import metrics
from ..errors import problem
from ..stores import StoreUnavailable
from . import health, items, openapi, whoami

# Every blueprint the service serves; `make resource` adds its module here.
BLUEPRINTS: tuple[Blueprint, ...] = (
    health.blueprint,
    whoami.blueprint,
    items.blueprint,
    metrics.blueprint,
)


def _unavailable(error: StoreUnavailable) -> Response:
    # The database is down or too slow: the client may retry, and the rest of the API works on.
    return problem(503, headers={"Retry-After": str(error.retry_after)})


def register_blueprints(app: Flask, *, openapi_enabled: bool = False) -> None:
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.register_error_handler(StoreUnavailable, _unavailable)
    if openapi_enabled:
        # Not registered at all when off: /openapi.json is then a plain 404 like any unknown path.
        app.register_blueprint(openapi.blueprint)


def routes_only() -> Flask:
    """An app with the service's routes and nothing else: what the OpenAPI document describes."""
    app = Flask(__name__.rpartition(".")[0], static_folder=None)
    register_blueprints(app)
    return app
