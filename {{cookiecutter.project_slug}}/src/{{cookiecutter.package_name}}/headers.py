"""Security headers for a JSON API on every response, errors included, and no HTTP redirect.

An API must not redirect HTTP to HTTPS (OWASP ASVS 5.0, 4.1.2): the redirect would hide
clients that already sent their key in cleartext. Plain HTTP is refused at start instead
(see settings.py), so Talisman's ``force_https`` stays off.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask import Flask, Response, request
from flask_talisman import Talisman
from werkzeug.datastructures import Headers

from .settings import Settings

ONE_YEAR = 365 * 24 * 60 * 60
CSP = {"default-src": "'none'", "frame-ancestors": "'none'"}
# Responses carry per-key data: no shared or private cache may keep them.
NO_STORE = ("Cache-Control", "no-store")

SECURE_SCHEMES = frozenset({"https", "wss"})  # werkzeug's Request.is_secure

Pairs = tuple[tuple[str, str], ...]


def add_ready(response: Response, pairs: Pairs | list[tuple[str, str]]) -> None:
    """``response.headers.add`` for values that cannot hold a line break (built at start, or
    digits): Werkzeug checks every value again on each call, a dozen headers per response."""
    response.headers._list.extend(pairs)


def set_ready(response: Response, pairs: Pairs, names: frozenset[str]) -> None:
    """``response.headers[name] = value`` for ready values: added, or replacing those a view
    already set (``names`` lowercase)."""
    existing = response.headers
    if any(name.lower() in names for name, _ in existing):
        for name, value in pairs:
            existing[name] = value
    else:
        add_ready(response, pairs)


class StaticTalisman(Talisman):  # type: ignore[misc]
    """Talisman, with its headers rendered once by Talisman itself and appended to each response.

    Talisman rebuilds the same strings (CSP, HSTS...) for every response and runs two
    before-request hooks that do nothing useful with ``force_https`` off and no CSP nonce.
    Its output depends only on whether the request is HTTPS (HSTS), as long as no view has its
    own Talisman options, which blueprints here never set (they do not touch headers).
    """

    def init_app(self, app: Flask, **options: Any) -> None:
        super().init_app(app, **options)
        if self.force_https or self.content_security_policy_nonce_in:
            raise ValueError("StaticTalisman renders fixed headers: no force_https, no CSP nonce")
        if self.session_cookie_secure and not app.debug:
            app.config["SESSION_COOKIE_SECURE"] = True  # what _force_https did on every request
        hooks = app.before_request_funcs[None]
        hooks.remove(self._force_https)
        hooks.remove(self._make_nonce)
        self.plain = (NO_STORE, *self._render(app, "http://localhost"))
        self.secure = (NO_STORE, *self._render(app, "https://localhost"))
        self.names = frozenset(name.lower() for name, _ in self.plain + self.secure)

    def _render(self, app: Flask, base_url: str) -> Pairs:
        target = SimpleNamespace(headers=Headers())
        with app.test_request_context("/", base_url=base_url):
            super()._set_response_headers(target)
        return tuple(target.headers.items())

    def _set_response_headers(self, response: Response) -> Response:
        # Talisman's own test for HTTPS, which decides HSTS (request.is_secure, or the header).
        environ = request.environ
        secure = (
            environ["wsgi.url_scheme"] in SECURE_SCHEMES or environ.get("HTTP_X_FORWARDED_PROTO") == "https"
        )
        set_ready(response, self.secure if secure else self.plain, self.names)
        return response


def install_headers(app: Flask, settings: Settings) -> None:
    StaticTalisman(
        app,
        force_https=False,
        strict_transport_security=True,
        strict_transport_security_max_age=ONE_YEAR,
        strict_transport_security_include_subdomains=True,
        strict_transport_security_preload=settings.hsts_preload,
        content_security_policy=CSP,
        frame_options="DENY",
        referrer_policy="no-referrer",
        session_cookie_secure=True,
        permissions_policy={},
    )
