"""The application factory: one line per defence, so the whole service reads as a table of contents."""

from __future__ import annotations

from flask import Flask

from . import logging as logs
from .api import register_blueprints
from .auth import install_auth
from .database import open_store
from .errors import install_errors
from .headers import install_headers
from .keys import KEY_PREFIX
from .limits import install_limits
from .metrics import install_metrics, watch_fallback
from .proxy import TrustedProxies
from .requestlog import install_request_log
from .serving import serving_settings
from .settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service. Without ``settings``: those the gunicorn master validated, or the
    environment's when there is no master (``flask run``, another WSGI server).

    Three constraints on the order below: authentication is installed before the limits,
    because Flask-Limiter checks in an app-level ``before_request`` that needs the caller;
    the limits come after the blueprints, whose views declare their own limits and
    exemptions; the proxy middleware wraps everything, so nothing reads a forwarded header
    it has not vetted. Every response, errors included, passes through every
    ``after_request`` hook: headers, quota fields and the request line.
    """
    if settings is None:
        settings = serving_settings()
    logs.configure(
        key_prefix=KEY_PREFIX,
        json_lines=not settings.development,
        level=settings.log_level,
        line_limit=settings.log_line_limit,
    )

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # Unhandled errors must reach the problem+json handler, also under a test client.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["items"] = open_store(settings)

    install_request_log(app)
    install_metrics(app, settings.metrics_dir)
    install_errors(app)
    install_auth(app, settings.keys, https_only=settings.app_env == "production")
    register_blueprints(app, openapi_enabled=settings.openapi_enabled)
    watch_fallback(app, install_limits(app, settings))
    install_headers(app, settings)
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.forwarded_allow_ips)  # type: ignore[method-assign]
    return app
