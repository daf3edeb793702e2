"""Security headers for a JSON API on every response, errors included, and no HTTP redirect.

An API must not redirect HTTP to HTTPS (OWASP ASVS 5.0, 4.1.2): the redirect would hide
clients that already sent their key in cleartext. Plain HTTP is refused at start instead
(see settings.py), so Talisman's ``force_https`` stays off.
"""

from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

from .settings import Settings

ONE_YEAR = 365 * 24 * 60 * 60
CSP = {"default-src": "'none'", "frame-ancestors": "'none'"}


def install_headers(app: Flask, settings: Settings) -> None:
    Talisman(
        app,
        force_https=False,
        strict_transport_security=True,
        strict_transport_security_max_age=ONE_YEAR,
        strict_transport_security_include_subdomains=True,
        strict_transport_security_preload=settings.hsts_preload,
        content_security_policy=CSP,
        frame_options="DENY",
        referrer_policy="no-referrer",
        # Browser features a JSON API never uses: no policy to build on every response. (No
        # Document-Policy nor Feature-Policy either: Talisman sends none unless given one.)
        permissions_policy={},
    )
