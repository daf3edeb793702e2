"""Rate limits per key id (never the key) and per address, so one client cannot starve others
and key guessing stays slow (CWE-307).

Storage keys look like ``LIMITS:LIMITER/key:<key id>/...`` or ``.../addr:<address>/...``:
safe to read, and nothing in them can be turned back into a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, Response, g, request
from flask_limiter import ApplicationLimit, Limiter
from limits import parse_many

from .limiter import limiter_class
from .settings import Settings

View = TypeVar("View", bound=Callable[..., object])

RATE_LIMIT = "rate_limit"
EXEMPT = "rate_limit_exempt"
# Fail fast when Redis does not answer, instead of holding a worker for the OS timeout.
REDIS_OPTIONS: dict[str, str | int] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "health_check_interval": 5,
}


def limit(value: str) -> Callable[[View], View]:
    """Give one route its own limit (per key), replacing RATELIMIT_DEFAULT for it."""

    def mark(view: View) -> View:
        setattr(view, RATE_LIMIT, value)
        return view

    return mark


def exempt(view: View) -> View:
    """No rate limit at all on this route (health checks)."""
    setattr(view, EXEMPT, True)
    return view


def limit_key() -> str:
    caller = g.get("caller")
    return f"key:{caller.key_id}" if caller is not None else f"addr:{client_address()}"


def client_address() -> str:
    # REMOTE_ADDR is the peer, or what a trusted proxy reported (see proxy.py); never a
    # header a client can set on its own.
    return f"{request.remote_addr}"


def _has_valid_key() -> bool:
    return g.get("caller") is not None


def _failed_authentication(response: Response) -> bool:
    return response.status_code == 401


def install_limits(app: Flask, settings: Settings) -> Limiter:
    """Wire Flask-Limiter. Must run after ``install_auth``: its check is an app-level
    ``before_request`` and needs the caller that authentication found."""
    auth_failures = ApplicationLimit(
        settings.ratelimit_auth_failures,
        key_function=lambda: f"addr:{client_address()}",
        scope="auth-failures",
        exempt_when=_has_valid_key,
        deduct_when=_failed_authentication,
    )
    options = REDIS_OPTIONS if settings.shared_limits else {}
    limiter = limiter_class()(
        limit_key,
        default_limits=[settings.ratelimit_default],
        application_limits=[auth_failures],
        headers_enabled=True,
        strategy=settings.ratelimit_strategy,
        storage_uri=settings.ratelimit_storage_uri,
        storage_options=options,
        # Redis down: count in this process's memory and probe Redis again, rather than
        # answer 500 or stop limiting (see the README, "Rate limits").
        in_memory_fallback_enabled=settings.shared_limits,
        # Flask-Limiter switches to memory once per process, on the first failed request;
        # requests already in flight in other threads then meet the same storage error, as
        # may the after-request deduction and headers. Those few pass uncounted (logged)
        # instead of answering 500.
        swallow_errors=settings.shared_limits,
        retry_after="delta-seconds",
    )
    limiter.init_app(app)
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, EXEMPT, False):
            limiter.exempt(view)
        value = getattr(view, RATE_LIMIT, None)
        if value is not None:
            try:
                parse_many(value)
            except ValueError:
                # Flask-Limiter would log and silently fall back to the default limit.
                raise ValueError(f"route {endpoint}: invalid rate limit {value!r}") from None
            # The wrapper is what checks a decorated limit: it must replace the view.
            app.view_functions[endpoint] = limiter.limit(value)(cast(Callable[..., Any], view))
    return limiter
