"""The application factory: one line per defence, so the whole service reads as a table of contents."""

from __future__ import annotations

from flask import Flask

from . import logging as logs
from .access import Declarations
from .api import register_blueprints
from .auth import Authenticator
from .database import open_stores
from .errors import install_errors
from .gate import install_gate
from .headers import install_headers
from .keys import KEY_PREFIX
from .keywatch import KeyWatch
from .limits import prepare_limits
from .metrics import install_metrics
from .proxy import TrustedProxies
from .requestlog import RequestLog
from .serving import serving_settings
from .settings import Settings
from .stores.key_records import KeyRecords


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service. Without ``settings``: those the gunicorn master validated, or the
    environment's when there is no master (``flask run``, another WSGI server).

    Two constraints on the order below: the request gate is installed before Flask-Limiter,
    whose check needs the caller the gate identified; the proxy middleware wraps everything,
    so nothing reads a forwarded header it has not vetted. Every response, errors included,
    passes through the gate's ``after_request``: quota fields, metrics and the request line.
    """
    if settings is None:
        settings = serving_settings()
    logs.configure(
        key_prefix=KEY_PREFIX,
        json_lines=not settings.development,
        level=settings.log_level,
        line_limit=settings.log_line_limit,
    )

    # No static folder: an API serves no files, and /static/<path> would be a route of its own.
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # Unhandled errors must reach the problem+json handler, also under a test client.
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["stores"] = stores = open_stores(settings)
    app.extensions["keywatch"] = watch = KeyWatch(KeyRecords(stores.database), settings.keys)

    install_errors(app)
    install_gate(
        app,
        Authenticator(settings.keys, watch),
        prepare_limits(settings),
        install_metrics(app, settings.metrics_dir, stores.database),
        RequestLog(),
        https_only=settings.app_env == "production",
    )
    register_blueprints(app, openapi_enabled=settings.openapi_enabled)
    install_headers(app, settings)
    Declarations(app).check()
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.forwarded_allow_ips)  # type: ignore[method-assign]
    # Last: an app that failed to build leaves no loop reading the database behind.
    watch.start()
    return app
