"""The application factory: each line installs one defence, in the order a request meets them."""

from __future__ import annotations

from flask import Flask

from . import logging as logs
from .api import register_blueprints
from .auth import install_auth
from .errors import install_errors
from .headers import install_headers
from .keys import KEY_PREFIX
from .limits import install_limits
from .proxy import TrustedProxies
from .requestlog import install_request_log
from .settings import Settings, serving_settings
from .store import SqliteItems


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service. Without ``settings``: those the gunicorn master validated, or the
    environment's when there is no master (``flask run``, another WSGI server)."""
    if settings is None:
        settings = serving_settings()
    logs.configure(key_prefix=KEY_PREFIX, json_lines=not settings.development, level=settings.log_level)

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # Unhandled errors must reach the problem+json handler, also under a test client.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["settings"] = settings
    app.extensions["items"] = SqliteItems(settings.items_db)

    install_errors(app)
    install_request_log(app)
    install_auth(app, settings.keys)
    register_blueprints(app, openapi_enabled=settings.openapi_enabled)
    install_limits(app, settings)
    install_headers(app, settings)
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.forwarded_allow_ips)  # type: ignore[method-assign]
    return app
